"""The data cursor: where training is in the data (epoch, batch), and the windows it hands out.

A *window* is the ``gradient_accumulation_steps`` micro-batches of one optimizer step; it never
crosses an epoch boundary. The cursor's state goes into checkpoints: the epoch, the batch in the
epoch, the tokens seen, and the global position: the samples (windows) consumed in the epoch over
all processes, with their number. On resume it positions the loader at that global sample, so the
batches that follow are exactly those an uninterrupted run would have seen, and a run saved by
``W`` processes continues on ``W'`` from the same window. Checkpoints written before the global
position existed resume at their batch index, as they always did.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nima.config.training import TrainingConfig
from nima.data import set_loader_epoch
from nima.distributed import DistributedContext
from nima.errors import ConfigError
from nima.training.batches import unpack_batch

NO_BATCHES = (
    "the train loader yields no batches; is the dataset smaller than one batch "
    "(check max_length, batch_size and drop_last)?"
)


@dataclass
class Window:
    """The micro-batches of one optimizer step."""

    batches: list[Any]
    tokens: int
    """Input tokens in the window, over all processes."""
    ends_epoch: bool
    """The epoch ended with (or just before) this window."""


@contextlib.contextmanager
def quiet_rng():
    """Shield the training RNG stream: DataLoader draws its base seed from the global torch RNG
    when an iterator is created, which would make a mid-epoch resume differ from a straight run."""
    with torch.random.fork_rng(devices=[]):
        yield


def position_loader(loader: Any, epoch: int, start_batch: int, start_sample: int | None = None) -> int:
    """Put ``loader`` at (epoch, start_batch), or at the epoch's global sample ``start_sample``
    where its sampler can start there; returns the batches still to skip by hand."""
    sampler = getattr(loader, "sampler", None)
    if start_sample is not None and hasattr(sampler, "set_global_start"):
        set_loader_epoch(loader, epoch, start_sample=start_sample)
        return 0
    if hasattr(sampler, "set_start"):
        set_loader_epoch(loader, epoch, start_batch=start_batch)
        return 0
    for obj in (getattr(loader, "dataset", None), sampler):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    return start_batch


class DataCursor:
    """Hands out windows of ``accumulation`` micro-batches from ``loader``, epoch after epoch."""

    def __init__(self, loader: Iterable, accumulation: int = 1, world_size: int = 1) -> None:
        self.loader = loader
        self.accumulation = accumulation
        self.world_size = world_size
        self.epoch = 0
        self.batch_in_epoch = 0
        self.tokens_seen = 0
        self.samples_in_epoch = 0
        """Samples (windows) of this epoch consumed so far, over all processes."""
        self._start_sample: int | None = None  # the global sample a resume starts the epoch at
        self._iter: Iterator | None = None
        self.batches_per_epoch = self._loader_length()
        if self.batches_per_epoch == 0:
            raise ConfigError(NO_BATCHES)

    def _loader_length(self) -> int | None:
        try:
            with quiet_rng():
                position_loader(self.loader, 0, 0)
            return len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            return None

    def next_window(self) -> Window:
        """The next window (possibly empty when an iterable loader ran out at a step boundary);
        moves to the next epoch when this one ends."""
        if self._iter is None:
            with quiet_rng():
                skip = position_loader(self.loader, self.epoch, self.batch_in_epoch, self._start_sample)
                self._iter = iter(self.loader)
            for _ in range(skip):
                next(self._iter, None)
        batches, exhausted = [], False
        room = self.accumulation
        if self.batches_per_epoch is not None:
            room = min(room, self.batches_per_epoch - self.batch_in_epoch)
        while len(batches) < room:
            try:
                batches.append(next(self._iter))
            except StopIteration:
                exhausted = True
                break
        inputs = [unpack_batch(b)[0] for b in batches]
        tokens = sum(x.numel() for x in inputs) * self.world_size
        self.batch_in_epoch += len(batches)
        self.tokens_seen += tokens
        self.samples_in_epoch += sum(len(x) for x in inputs) * self.world_size
        per_epoch = self.batches_per_epoch
        ends = exhausted or (per_epoch is not None and self.batch_in_epoch >= per_epoch)
        if ends:
            if not batches and self.batch_in_epoch == 0:
                raise ConfigError(NO_BATCHES)
            self.epoch += 1
            self.batch_in_epoch = self.samples_in_epoch = 0
            self._start_sample = None
            self._iter = None
        return Window(batches, tokens, ends)

    @property
    def epochs_done(self) -> float:
        """Epochs completed, with the current one's fraction."""
        part = self.batch_in_epoch / self.batches_per_epoch if self.batches_per_epoch else 0.0
        return self.epoch + part

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "tokens_seen": self.tokens_seen,
            "samples_in_epoch": self.samples_in_epoch,
            "data_world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``'s position. With ``samples_in_epoch`` (and a sampler that can start
        there, as :func:`~nima.data.create_dataloader`'s can) the loader starts at that global
        sample, whatever the number of processes that saved it; the batch index is then counted
        again for this run's processes. Without it (older checkpoints): at the batch index."""
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.tokens_seen = int(state.get("tokens_seen") or 0)
        self._iter = None
        samples = state.get("samples_in_epoch")
        self._start_sample = None
        if samples is None:  # every batch before a stop mid-epoch was a full one
            rows = getattr(self.loader, "batch_size", None) or 0
            self.samples_in_epoch = self.batch_in_epoch * rows * self.world_size
            return
        self.samples_in_epoch = int(samples)
        if hasattr(getattr(self.loader, "sampler", None), "set_global_start") and self.batches_per_epoch:
            self._start_sample = self.samples_in_epoch
            with quiet_rng():
                position_loader(self.loader, self.epoch, 0, self._start_sample)
            self.batch_in_epoch = self.batches_per_epoch - len(self.loader)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- loader facts


def batch_shape(loader: Iterable, model: nn.Module) -> tuple[int | None, int | None]:
    """(sequences per batch, tokens per sequence) as far as the loader and model tell."""
    seq_len = getattr(getattr(loader, "dataset", None), "max_length", None)
    if seq_len is None:
        seq_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    return getattr(loader, "batch_size", None), seq_len


def check_loader(loader: Iterable, config: TrainingConfig, dist: DistributedContext) -> None:
    """For a loader handed in from Python: ConfigError for ``batch_size: auto`` (which sizes only
    the loaders Nima builds); a warning when its batches disagree with the config or are not
    sharded by rank."""
    if config.batch_size == "auto":
        raise ConfigError(
            "training.batch_size: auto sizes the loaders that nima train builds; for a loader of your "
            "own, find the size with find_max_batch_size(model) and build the loader with it"
        )
    batch_size = getattr(loader, "batch_size", None)
    if batch_size is not None and batch_size != config.batch_size:
        warnings.warn(
            f"TrainingConfig.batch_size={config.batch_size} but the train loader yields batches of "
            f"{batch_size}; the Trainer uses the loader's batches (batch_size only sizes "
            "the loaders that scripts/train.py builds)",
            stacklevel=4,
        )
    sampler = getattr(loader, "sampler", None)
    shards = getattr(sampler, "world_size", getattr(sampler, "num_replicas", 1))
    if dist.enabled and shards != dist.world_size:
        warnings.warn(
            "running on several processes but the train loader is not sharded by rank: every "
            "process sees the same batches; build it with create_dataloader(rank=, world_size=)",
            stacklevel=4,
        )


def run_length(config: TrainingConfig, batches_per_epoch: int | None) -> tuple[int | None, int]:
    """(optimizer steps per epoch, total steps): ``max_steps``, else ``num_epochs`` epochs."""
    accumulation = config.gradient_accumulation_steps
    per_epoch = math.ceil(batches_per_epoch / accumulation) if batches_per_epoch else None
    if config.max_steps is not None:
        return per_epoch, config.max_steps
    if per_epoch:
        return per_epoch, config.num_epochs * per_epoch
    raise ConfigError("the train loader has no length; set training.max_steps")
