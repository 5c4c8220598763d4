"""Checkpoint files: atomic writes, safe loads, RNG state capture, and matching checks on resume.

A checkpoint is ``torch.save`` of a plain dict (format ``nima-checkpoint-v1``) holding only
tensors, numbers, strings, lists and dicts, so it always loads with ``weights_only=True``: no
pickled code is ever run. Files are written to a temporary file in the same folder, flushed,
fsynced and renamed over the target, so a crash never leaves a half-written checkpoint. The
temporary file's name carries the writer's host and process id, so that the next run can delete
what a killed writer left behind (``remove_partial_checkpoints``) without touching a live write.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import socket
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nima.errors import CheckpointError

FORMAT = "nima-checkpoint-v1"

# Model settings that may differ between a checkpoint and the model resuming from it.
RUNTIME_MODEL_KEYS = frozenset(
    {
        "dropout",
        "gradient_checkpointing",
        "attn_dropout",
        "resid_dropout",
        "embd_dropout",
        "attention_backend",
        "use_flash",
        "compile",
    }
)


# Temporary checkpoint files (".<name>.<host>-<pid>.<random>.tmp") older than this are removed
# whoever wrote them: no save takes a day.
PARTIAL_STALE_AFTER_S = 24 * 3600


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = f"{socket.gethostname()}-{os.getpid()}"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{writer}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a Nima checkpoint with ``weights_only=True``; CheckpointError when missing or foreign.

    ``mmap=True`` maps the tensors instead of reading them: cheap when only the metadata is needed.
    """
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            found = sorted(p.name for p in path.parent.glob("*.pt"))
            hint = f"; found there: {', '.join(found[:8])}" if found else "; no .pt files there"
        raise CheckpointError(f"checkpoint not found: {path}{hint}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable Nima checkpoint (corrupt, truncated or not "
            f"saved by Nima): {first[:200]}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CheckpointError(
            f"{path} is not a Nima checkpoint (expected format {FORMAT!r}); "
            "only files saved by Nima's Trainer can be loaded"
        )
    return ckpt


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP/FSDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            return model


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` and ``_orig_mod.`` prefixes that wrappers add to parameter names."""
    return {
        re.sub(r"^(?:(?:module|_orig_mod)\.)+", "", k).replace("._orig_mod.", "."): v
        for k, v in state.items()
    }


def load_model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the GPT saved in a checkpoint: returns ``(model in eval mode on device, checkpoint dict)``."""
    from nima.models import ModelConfig, create_model

    ckpt = load_checkpoint_file(path, map_location="cpu")
    if not isinstance(ckpt.get("model_config"), dict):
        raise CheckpointError(f"{path} has no model_config; it cannot be rebuilt without one")
    model = create_model(ModelConfig.from_dict(ckpt["model_config"]))
    try:
        model.load_state_dict(clean_state_dict(ckpt["model"]))
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: weights do not fit the saved model config: {str(err).splitlines()[0][:200]}"
        ) from None
    return model.to(device).eval(), ckpt


def save_model_checkpoint(model: torch.nn.Module, tokenizer: Any, path: str | Path, **extra: Any) -> Path:
    """Write a checkpoint with weights, model config and tokenizer identity only (no training state).

    ``nima eval`` and ``nima generate`` read it like any other; the tokenizer is saved as
    ``tokenizer.json`` next to the ``checkpoints/`` folder holding ``path``, and recorded by path.
    """
    path = Path(path)
    tokenizer_path = tokenizer.save(path.parent.parent / "tokenizer.json")
    state = {
        "format": FORMAT,
        "model": clean_state_dict(unwrap_model(model).state_dict()),
        "model_config": model.config.to_dict(),
        "tokenizer": {**tokenizer.identity(), "path": str(tokenizer_path.resolve())},
        "data": {"prepared_path": None},
        "training_config": {},
        "step": 0,
        "epoch": 0,
        **extra,
    }
    return atomic_save(state, path)


# --- random number generator state (kept as plain types so weights_only loading works) ---


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
    from nima.distributed import all_gather_tensors

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


# --- checks when resuming ---


def model_config_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: checkpoint X, model Y`` for each architecture setting that differs."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in RUNTIME_MODEL_KEYS or key not in saved or key not in current:
            continue
        a, b = saved[key], current[key]
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b:
            out.append(f"model.{key}: checkpoint {a!r}, model {b!r}")
    return out


def tokenizer_mismatches(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> list[str]:
    """Differences in tokenizer identity (kind, vocab_size, sha256) when both sides know it."""
    if not saved or not current:
        return []
    return [
        f"tokenizer.{key}: checkpoint {saved[key]!r}, data {current[key]!r}"
        for key in ("kind", "vocab_size", "sha256")
        if key in saved and key in current and saved[key] != current[key]
    ]


def step_checkpoints(folder: Path, prefix: str) -> list[Path]:
    """``<prefix>_N.pt`` files in ``folder``, oldest (smallest N) first."""
    found = []
    for p in folder.glob(f"{prefix}_*.pt"):
        m = re.fullmatch(rf"{prefix}_(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _local_writer_is_gone(tmp_name: str) -> bool:
    """Whether the temporary file was written on this host by a process that no longer exists."""
    match = re.fullmatch(rf"\..+\.{re.escape(socket.gethostname())}-(\d+)\.\w+\.tmp", tmp_name)
    if match is None:
        return False  # another node's (or an older format's): only its age can tell
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists, run by another user
    return False


def remove_partial_checkpoints(
    folder: str | Path, stale_after_s: float = PARTIAL_STALE_AFTER_S
) -> list[Path]:
    """Delete the temporary files that writers killed mid-save left in ``folder``; returns them.

    A file goes when its writer (host and pid in its name) no longer runs on this host, or when
    it is older than ``stale_after_s`` (a writer on another node); a write in progress stays.
    """
    folder = Path(folder)
    removed = []
    now = time.time()
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
        try:
            if _local_writer_is_gone(tmp.name) or now - tmp.stat().st_mtime > stale_after_s:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            pass  # its writer finished or removed it meanwhile
    return removed


def newest_checkpoint(output_dir: str | Path) -> Path | None:
    """The most recently written ``step_N.pt`` or ``epoch_N.pt`` under ``output_dir/checkpoints``."""
    folder = Path(output_dir) / "checkpoints"
    found = [*step_checkpoints(folder, "step"), *step_checkpoints(folder, "epoch")]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)


def prune_checkpoints(folder: Path, prefix: str, keep: int | None, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` ``<prefix>_N.pt`` files; returns what was removed."""
    if keep is None:
        return []
    files = step_checkpoints(folder, prefix)
    removed = []
    for p in files[: max(0, len(files) - keep)]:
        if protect is not None and p.resolve() == protect.resolve():
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed
