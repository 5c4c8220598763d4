"""The checkpointer: what to save when, where, in the foreground or the background, and loading.

Components that own training state (the step count, the data cursor, the validator, early
stopping, the schedule, the loss scaler) are registered once with :meth:`Checkpointer.register`;
a checkpoint is the model, the optimizer and everything they report through ``state_dict()``,
laid out by :func:`nima.checkpoint.make_checkpoint`. Under torchrun every rank takes part in a
save (each contributes its RNG state, and FSDP's shards are gathered), and rank 0 writes.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from nima.checkpoint import (
    capture_rng_state,
    clean_state_dict,
    gather_rank_rng_states,
    load_checkpoint_file,
    make_checkpoint,
    model_config_mismatches,
    prune_checkpoints,
    remove_partial_checkpoints,
    restore_rank_rng_state,
    restore_rng_state,
    tokenizer_mismatches,
)
from nima.checkpoint.compat import data_mismatch
from nima.checkpoint.format import UNREADABLE_FIX, check_finite, write_failed
from nima.checkpoint.format import write_checkpoint_file as atomic_save  # says why a write failed
from nima.distributed.fsdp import full_state_dicts, load_full_model_state, load_full_optimizer_state
from nima.errors import CheckpointError
from nima.files import reading
from nima.runtime import Runtime, is_sharded
from nima.training.background_save import BackgroundSaver
from nima.training.schedulers import follow_changed_schedule


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Checkpointer:
    """Saves ``<folder>/step_N.pt`` every ``save_every`` steps (0: only at the end), keeps the
    newest ``keep_last`` of them, and writes in the background when ``async_write``."""

    def __init__(
        self,
        folder: str | Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        runtime: Runtime,
        save_every: int = 0,
        keep_last: int | None = None,
        async_write: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.model = model
        self.optimizer = optimizer
        self.runtime = runtime
        self.save_every = save_every
        self.keep_last = keep_last
        self.async_write = async_write
        self.metadata = metadata or {}
        """What every checkpoint records about the run (:func:`nima.checkpoint.metadata.run_metadata`)."""
        self.sharded = is_sharded(model)
        self.saver = BackgroundSaver()
        self.last_saved_step = -1
        self.last_path: Path | None = None
        self._flat: list[Stateful] = []
        self._keyed: dict[str, Stateful | None] = {}

    def register(self, component: Stateful | None, key: str | None = None) -> None:
        """Save ``component.state_dict()`` under ``key`` (None is saved as None), or, without a
        key, merge its entries into the checkpoint's top level."""
        if key is None:
            self._flat.append(component)
        else:
            self._keyed[key] = component

    def due(self, step: int) -> bool:
        return bool(self.save_every) and step % self.save_every == 0

    # ------------------------------------------------------------------ saving

    def remove_leftovers(self) -> list[Path]:
        """Delete the temporary files of saves that a killed run did not finish (rank 0)."""
        return remove_partial_checkpoints(self.folder) if self.runtime.is_main else []

    def save(self, name: str, step: int, all_ranks: bool = True) -> Path:
        """Write ``<folder>/<name>.pt`` (a bare name) or ``name`` (a path); returns the path.

        Under torchrun every rank must call it, unless ``all_ranks=False``: then only rank 0
        does, and the checkpoint holds only rank 0's random state.
        """
        path = Path(name)
        if path.suffix != ".pt":
            path = path.with_name(path.name + ".pt")
        if not path.is_absolute() and path.parent == Path("."):
            path = self.folder / path
        gathered = self._gather() if all_ranks else {}
        if path.name.startswith("step_"):
            self.last_saved_step = step
        self.last_path = path if path.name.startswith(("step_", "epoch_")) else self.last_path
        if not self.runtime.is_main:
            return path
        state = self.state(gathered)
        if self.async_write:  # a failed write is raised by the next save or by close()
            self.saver.submit(state, lambda snapshot: self._write(snapshot, path))
        else:
            try:
                self._write(state, path)
            except OSError as err:  # a full disk: one line naming the file; nothing was pruned
                raise write_failed(path, err) from None
        return path

    def state(self, gathered: dict[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint dict. ``gathered``: what the ranks collected together (every rank's
        RNG state; for an FSDP model the full model and optimizer states)."""
        gathered = gathered or {}
        training_state: dict[str, Any] = {}
        for component in self._flat:
            training_state.update(component.state_dict())
        for key, component in self._keyed.items():
            training_state[key] = component.state_dict() if component is not None else None
        return make_checkpoint(
            gathered.get("model") or self.model.state_dict(),
            optimizer=gathered.get("optimizer") or self.optimizer.state_dict(),
            rng=capture_rng_state(),
            rng_by_rank=gathered.get("rng_by_rank"),
            world_size=self.runtime.dist.world_size,
            precision=self.runtime.precision.name,
            **self.metadata,
            **training_state,
        )

    def _gather(self) -> dict[str, Any]:
        if not self.runtime.dist.enabled:
            return {}
        gathered: dict[str, Any] = {"rng_by_rank": gather_rank_rng_states()}
        if self.sharded:
            gathered["model"], gathered["optimizer"] = full_state_dicts(self.model, self.optimizer)
        return gathered

    def _write(self, state: dict[str, Any], path: Path) -> None:
        atomic_save(state, path)
        for prefix in ("step", "epoch"):
            if path.name.startswith(prefix + "_"):
                prune_checkpoints(path.parent, prefix, self.keep_last, protect=path)

    def wait(self) -> None:
        """Block until a background write is on disk; CheckpointError if it failed."""
        self.saver.wait()

    def write_in_foreground(self) -> None:
        """Finish any background write, and write every later checkpoint in the foreground (when
        memory is short: a background write first copies the whole state)."""
        self.saver.wait()
        self.async_write = False

    def close(self, raise_errors: bool = True) -> None:
        """Wait for the last background write; its error is raised, or only warned about when
        another error is already on its way out."""
        try:
            self.saver.close()
        except CheckpointError as err:
            if raise_errors:
                raise
            warnings.warn(str(err), stacklevel=3)

    # ------------------------------------------------------------------ loading

    def load(self, path: str | Path, weights_only_model: bool = False) -> dict[str, Any]:
        """Restore the model (and, unless ``weights_only_model``, the optimizer, every registered
        component and the random state) from ``path``; CheckpointError when it does not fit."""
        self.saver.wait()  # the file may be the one still being written
        # The weights alone (init_from): mapped, so that the optimizer state is never read.
        ckpt = load_checkpoint_file(path, map_location="cpu", mmap=weights_only_model)
        # Whatever a damaged file makes a component's load_state_dict raise is one line naming it.
        with reading(path, "Nima checkpoint", CheckpointError, fix=UNREADABLE_FIX):
            self._check_fits(ckpt, path, same_data=not weights_only_model)
            self._load_model(ckpt, path)
            if weights_only_model:
                return ckpt
            self._load_optimizer(ckpt, path)
            for component in self._flat:
                component.load_state_dict(ckpt)
            for key, component in self._keyed.items():
                if component is not None and ckpt.get(key):
                    component.load_state_dict(ckpt[key])
            self._restore_rng(ckpt, path)
        note = follow_changed_schedule(self._keyed.get("scheduler"), path)
        if note and self.runtime.is_main:
            print(note, flush=True)
        saved, now = ckpt.get("precision"), self.runtime.precision.name
        if saved and saved != now and self.runtime.is_main:
            warnings.warn(
                f"{path} was trained in {saved} and this run trains in {now}; set training.precision: "
                f"{saved} to continue as it started",
                stacklevel=3,
            )
        return ckpt

    def _check_fits(self, ckpt: dict[str, Any], path: str | Path, same_data: bool = True) -> None:
        """CheckpointError unless the checkpoint fits: the same tokenizer and model architecture,
        and (``same_data``: resuming, not starting from its weights) the same prepared data."""
        current = self.metadata
        diffs = tokenizer_mismatches(ckpt.get("tokenizer"), current.get("tokenizer"))
        if diffs:
            raise CheckpointError(
                f"{path} was trained with a different tokenizer: {'; '.join(diffs)}; train on data "
                "prepared with its tokenizer (data.tokenizer: the path of its tokenizer.json)"
            )
        if ckpt.get("model_config") and current.get("model_config"):
            diffs = model_config_mismatches(ckpt["model_config"], current["model_config"])
            if diffs:
                raise CheckpointError(
                    f"{path} does not match this model: {'; '.join(diffs)}; use the model settings it "
                    "was trained with (or --init_from, which takes them from the checkpoint)"
                )
        if same_data:
            now = {**(current.get("data_identity") or {}), "prepared_path": current.get("prepared_path")}
            changed = data_mismatch(ckpt.get("data"), now)
            if changed:
                raise CheckpointError(
                    f"{path} was trained on other data: {changed}; resume on the data it was trained "
                    f"on, or start a new run from its weights with --init_from {path}"
                )

    def _load_model(self, ckpt: dict[str, Any], path: str | Path) -> None:
        weights = clean_state_dict(ckpt["model"])
        check_finite(weights, path)
        try:
            if self.sharded:  # every rank reads the file and keeps its own shards
                load_full_model_state(self.model, weights)
            else:
                self.model.load_state_dict(weights)
        except RuntimeError as err:
            raise CheckpointError(
                f"{path}: weights do not fit this model: {str(err).splitlines()[0][:200]}"
            ) from None

    def _load_optimizer(self, ckpt: dict[str, Any], path: str | Path) -> None:
        before = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        try:
            if self.sharded:
                load_full_optimizer_state(self.model, self.optimizer, ckpt["optimizer"])
            else:
                self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, IndexError) as err:
            raise CheckpointError(
                f"{path}: optimizer state does not fit this optimizer (was optimizer_type changed?): {err}"
            ) from None
        for group, settings in zip(self.optimizer.param_groups, before, strict=False):
            # How the optimizer runs (fused kernels ...) is this run's choice, for its device: the
            # flags the optimizer was built with stand, whatever the file says.
            group.update({key: settings[key] for key in IMPLEMENTATION_FLAGS if key in settings})
        damaged = _damaged_optimizer_state(self.optimizer, before)
        if damaged:
            raise CheckpointError(
                f"{path} is damaged: its optimizer state has {damaged}; use another checkpoint"
            )

    def _restore_rng(self, ckpt: dict[str, Any], path: str | Path) -> None:
        """Each rank takes back its own generator states; warn when that is not possible."""
        dist = self.runtime.dist
        saved_world, by_rank = int(ckpt.get("world_size") or 1), ckpt.get("rng_by_rank")
        if not ckpt.get("rng"):
            return
        if dist.world_size == 1 and saved_world == 1:
            restore_rng_state(ckpt["rng"])
        elif by_rank and len(by_rank) == dist.world_size:
            if dist.is_main:
                restore_rng_state(ckpt["rng"])
            restore_rank_rng_state(by_rank[dist.rank])
        elif dist.is_main:
            why = (
                f"it was saved by {saved_world} processes and this run has {dist.world_size}"
                if saved_world != dist.world_size
                else "it holds only rank 0's random state (saved on interrupt)"
            )
            warnings.warn(
                f"{path}: random streams (dropout) start afresh because {why}; "
                "training continues, but not bit-exactly as an uninterrupted run would",
                stacklevel=4,
            )


IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")
"""Optimizer settings that say how it runs, not what it computes."""


def _damaged_optimizer_state(optimizer: torch.optim.Optimizer, before: list[dict[str, Any]]) -> str | None:
    """What is wrong with an optimizer state just loaded (None when nothing): torch takes any
    values, and a wrong one fails only inside the first step. Every per-parameter entry but the
    step count is a finite tensor of its parameter's shape (or None); every numeric setting
    (``lr``, ``betas``, ``eps`` ...) is still a finite number, or as many as ``before``; every flag
    (``fused``, ``maximize`` ...) still a flag."""

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    for group, settings in zip(optimizer.param_groups, before, strict=False):
        for key, now in settings.items():
            if key not in group:
                return f"no setting {key}"
            value = group[key]
            if isinstance(now, tuple):
                fits = isinstance(value, (tuple, list)) and len(value) == len(now) and all(map(number, value))
            elif now is None or isinstance(now, bool):  # flags such as fused, foreach, maximize
                fits = value is None or isinstance(value, bool)
            else:
                fits = number(value) or not number(now)
            if not fits:
                return f"a setting {key} of {str(value)[:40]!r}"
        states = [optimizer.state.get(param, {}) for param in group["params"]]
        keys = set().union(*states)
        for param, state in zip(group["params"], states, strict=True):
            if state and set(state) != keys:  # every parameter's state has the same entries
                return f"a parameter without its {', '.join(sorted(map(str, keys - set(state))))}"
            for key, value in state.items():
                if value is None:
                    continue
                if key == "step":  # a one-element tensor, as torch's optimizers keep it
                    fits = torch.is_tensor(value) and value.numel() == 1 and bool(value >= 0)
                else:
                    fits = torch.is_tensor(value) and value.shape == param.shape and value.is_floating_point()
                if fits and torch.is_tensor(value) and value.is_floating_point():
                    fits = bool(torch.isfinite(value).all())
                if not fits:
                    return f"a {key} that does not fit its {tuple(param.shape)} parameter (or is not finite)"
    return None
