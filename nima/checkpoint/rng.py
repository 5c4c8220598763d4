"""Random number generator state, kept as plain types so that ``weights_only`` loading works.

An exact resume needs every generator back where it was: torch (CPU and CUDA), numpy and
Python's ``random``; under torchrun each rank's own torch generators too (dropout draws differ
between ranks, which seed with ``seed + rank``).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from nima.distributed import all_gather_tensors


def capture_rng_state() -> dict[str, Any]:
    """The torch, CUDA, numpy and Python RNG states as tensors and primitives."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": [int(x) for x in py_state],
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state` (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].cpu().numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def gather_rank_rng_states() -> list[dict[str, torch.Tensor | None]]:
    """Every process's torch generator states (CPU, and its own CUDA device), in rank order.

    Under torchrun each rank seeds torch with ``seed + rank``, so dropout draws differ between
    ranks and an exact resume needs each rank's own state back. A collective: every rank calls it.
    Single-process, it returns this process's state only.
    """
    cpu = torch.get_rng_state()
    on_cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda = torch.cuda.get_rng_state() if on_cuda else torch.empty(0, dtype=torch.uint8)
    flat = torch.cat([cpu, cuda])
    return [
        {"torch": part[: cpu.numel()].clone(), "cuda": part[cpu.numel() :].clone() if on_cuda else None}
        for part in all_gather_tensors(flat)
    ]


def restore_rank_rng_state(state: dict[str, torch.Tensor | None]) -> None:
    """Put back one rank's entry of :func:`gather_rank_rng_states` in this process."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
