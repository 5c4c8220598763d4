"""The data cursor: where training is in the data (epoch, batch), and the windows it hands out.

A *window* is the ``gradient_accumulation_steps`` micro-batches of one optimizer step; it never
crosses an epoch boundary. The cursor's state (epoch, batch in the epoch, tokens seen) goes into
checkpoints; on resume it positions the loader at the same batch, so the batches that follow are
exactly those an uninterrupted run would have seen.
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


def position_loader(loader: Any, epoch: int, start_batch: int) -> int:
    """Put ``loader`` at (epoch, start_batch); returns the batches still to skip by hand."""
    sampler = getattr(loader, "sampler", None)
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
                skip = position_loader(self.loader, self.epoch, self.batch_in_epoch)
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
        tokens = sum(unpack_batch(b)[0].numel() for b in batches) * self.world_size
        self.batch_in_epoch += len(batches)
        self.tokens_seen += tokens
        per_epoch = self.batches_per_epoch
        ends = exhausted or (per_epoch is not None and self.batch_in_epoch >= per_epoch)
        if ends:
            if not batches and self.batch_in_epoch == 0:
                raise ConfigError(NO_BATCHES)
            self.epoch += 1
            self.batch_in_epoch = 0
            self._iter = None
        return Window(batches, tokens, ends)

    @property
    def epochs_done(self) -> float:
        """Epochs completed, with the current one's fraction."""
        part = self.batch_in_epoch / self.batches_per_epoch if self.batches_per_epoch else 0.0
        return self.epoch + part

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "tokens_seen": self.tokens_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.tokens_seen = int(state.get("tokens_seen") or 0)
        self._iter = None


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
