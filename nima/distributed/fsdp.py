"""FSDP2 (``fully_shard``): parameters, gradients and optimizer state sharded across processes.

Each transformer block is its own shard group (its parameters are gathered just before the block
runs and freed after), and the root holds the rest (embeddings, final norm). Checkpoints stay in
the single-process layout: the full model state dict and the optimizer state dict keyed by
parameter index, exactly what ``optimizer.state_dict()`` gives without sharding. So a checkpoint
written by an FSDP run resumes under DDP or on one process, and the other way round.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from nima.errors import ConfigError


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard  # lazy: 0.6 s to import, FSDP runs only
    except ImportError:  # pragma: no cover - torch < 2.6
        raise ConfigError(
            f"training.distributed_strategy=fsdp needs torch >= 2.6 (FSDP2), found {torch.__version__}"
        ) from None
    return fully_shard


def shard_model(
    model: torch.nn.Module, device: torch.device, param_dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """Apply FSDP2 to ``model`` in place (every block in ``model.blocks``, then the root).

    Rank 0's parameters and buffers are broadcast first, so that, as with DDP, every rank starts
    from the same weights however each one created its model. With ``param_dtype`` (bf16 training)
    the parameters are gathered in that dtype, which halves the all-gather traffic and the memory of
    the gathered block, while gradients are reduced and the sharded weights and optimizer state
    kept in fp32 (FSDP2's ``MixedPrecisionPolicy``).
    """
    fully_shard = _fully_shard()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor, src=0)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    options: dict[str, Any] = {"mesh": mesh}
    if param_dtype is not None:
        from torch.distributed.fsdp import MixedPrecisionPolicy  # lazy: 0.6 s, FSDP runs only

        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in getattr(model, "blocks", ()):
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """True when ``model`` was wrapped by :func:`shard_model` (FSDP2)."""
    if "torch.distributed.fsdp" not in sys.modules:
        return False  # nothing can be sharded before FSDP is imported (which takes 0.6 s)
    try:
        from torch.distributed.fsdp import FSDPModule  # lazy: 0.6 s to import, FSDP runs only
    except ImportError:  # pragma: no cover - torch < 2.6
        return False
    return isinstance(model, FSDPModule)


def _parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Name of each optimizer parameter, in the order ``optimizer.state_dict()`` numbers them."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_state_dicts(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Gather a sharded model's full state dict and its optimizer's (index-keyed), on the CPU.

    A collective: every rank calls it; the returned dicts are complete on rank 0 only.
    """
    from torch.distributed.checkpoint.state_dict import (  # lazy: 0.6 s to import, FSDP runs only
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    index = {name: i for i, name in enumerate(_parameter_names(model, optimizer))}
    optimizer_state = {
        "state": {index[name]: value for name, value in by_name.get("state", {}).items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in by_name.get("param_groups", [])
        ],
    }
    return model_state, optimizer_state


def load_full_model_state(model: torch.nn.Module, model_state: dict[str, torch.Tensor]) -> None:
    """Load a full (unsharded) state dict into a sharded model; every rank calls it."""
    # lazy: 0.6 s to import, FSDP runs only
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, optimizer_state: dict[str, Any]
) -> None:
    """Load an index-keyed optimizer state dict (as saved) into a sharded model's optimizer."""
    # lazy: 0.6 s to import, FSDP runs only
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _parameter_names(model, optimizer)
    by_name = {
        "state": {names[int(i)]: value for i, value in optimizer_state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]}
            for group in optimizer_state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
