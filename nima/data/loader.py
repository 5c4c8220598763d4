"""Batches: the collator, a seeded resumable sampler with rank sharding, and ``create_dataloader``."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from nima.errors import ConfigError

IGNORE_INDEX = -100
"""Label value that the loss ignores (padding of shorter windows, prompt tokens); the one
definition, used by the collator, the model's loss, training and evaluation."""


class DataCollator:
    """Stacks windows of ``T + 1`` tokens into ``{"input_ids": (B, T), "labels": (B, T)}`` LongTensors.

    Labels are already shifted: ``labels[:, t]`` is the token after ``input_ids[:, t]``, so a model
    computes ``cross_entropy(logits.view(-1, V), labels.view(-1), ignore_index=-100)`` directly.
    Windows shorter than the longest in the batch are padded: inputs with ``pad_token_id`` (the
    tokenizer's end-of-text id, else 0) and labels with -100.
    """

    def __init__(self, tokenizer: Any = None, pad_token_id: int | None = None):
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "eos_token_id", None)
        self.pad_token_id = int(pad_token_id) if pad_token_id is not None else 0

    def __call__(self, windows: Sequence[torch.Tensor | dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        stacked = getattr(windows, "stacked", None)  # equal windows, already stacked (StackedWindows)
        if stacked is not None:
            return {"input_ids": stacked[:, :-1].contiguous(), "labels": stacked[:, 1:].contiguous()}
        if windows and isinstance(windows[0], dict):
            return self._stack_dicts(windows)  # type: ignore[arg-type]
        sequences = [torch.as_tensor(w, dtype=torch.long) for w in windows]
        length = max(len(s) for s in sequences) - 1
        if length < 1:
            raise ValueError("every window needs at least 2 tokens (an input and its target)")
        if all(len(s) == length + 1 for s in sequences):  # nothing to pad: slices of one stack
            stacked = torch.stack(sequences)
            return {"input_ids": stacked[:, :-1].contiguous(), "labels": stacked[:, 1:].contiguous()}
        inputs = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
        for row, seq in enumerate(sequences):
            n = len(seq) - 1
            inputs[row, :n] = seq[:-1]
            labels[row, :n] = seq[1:]
        return {"input_ids": inputs, "labels": labels}

    def _stack_dicts(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(len(item["input_ids"]) for item in items)
        inputs = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            inputs[row, :n] = torch.as_tensor(item["input_ids"])
            labels[row, :n] = torch.as_tensor(item["labels"])
        return {"input_ids": inputs, "labels": labels}


class ResumableSampler(Sampler[int]):
    """Indices in a seeded order, sharded by rank, that can start part-way into an epoch.

    - ``shuffle``: a permutation drawn from ``(seed, epoch)``: the same on every run and rank.
    - Sharding: the epoch's order is dealt to the ranks in turn from a global start ``g0`` (0 at
      an epoch start): rank ``r`` of ``world_size`` takes ``order[g0 + r]``,
      ``order[g0 + r + world_size]``, ... The order is padded by repeating its start (or, with
      ``drop_last``, cut) so that every rank gets the same number of samples, and the ranks never
      overlap otherwise.
    - :meth:`set_epoch` picks the epoch's order; :meth:`set_start` skips the first samples of this
      rank's share (exact resume on as many processes), :meth:`set_global_start` the first samples
      of the epoch over all ranks (exact resume on any number of processes: the samples ``W``
      processes consumed are the first ``g0`` of the order, whatever ``W`` was). ``len()``
      counts the samples still to come.
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
        self.num_samples = int(num_samples)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        """Samples of the epoch's order, over all ranks, that this iteration skips."""
        self.per_rank = self._share(0)

    def _share(self, start: int) -> int:
        """Samples per rank from global position ``start`` to the end of the epoch."""
        left = max(self.num_samples - start, 0)
        return left // self.world_size if self.drop_last else -(-left // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on, starting from its beginning."""
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, sample_index: int) -> None:
        """Skip the first ``sample_index`` samples of this rank's share of the current epoch."""
        if sample_index < 0:
            raise ConfigError(f"start sample must be >= 0, got {sample_index}")
        self.start = min(int(sample_index), self.per_rank) * self.world_size

    def set_global_start(self, sample_index: int) -> None:
        """Skip the first ``sample_index`` samples of the current epoch's order, over all ranks."""
        if sample_index < 0:
            raise ConfigError(f"start sample must be >= 0, got {sample_index}")
        self.start = min(int(sample_index), self.per_rank * self.world_size)

    def _order(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)  # torch's seeds stop there
            return torch.randperm(self.num_samples, generator=generator).tolist()
        return list(range(self.num_samples))

    def _rank_share(self, start: int) -> list[int]:
        order = self._order()
        end = start + self._share(start) * self.world_size
        if end > len(order) and order:
            order += (order * (end // len(order) + 1))[: end - len(order)]
        return order[start + self.rank : end : self.world_size]

    def epoch_order(self) -> list[int]:
        """This rank's indices for the current epoch, before skipping."""
        return self._rank_share(0)

    def __iter__(self) -> Iterator[int]:
        return iter(self._rank_share(self.start))

    def __len__(self) -> int:
        return self._share(self.start)


class EpochAwareDataLoader(DataLoader):
    """A DataLoader that moves its sampler and dataset to a new epoch each time it is iterated.

    Training loops that call :func:`set_loader_epoch` choose the epoch (and resume point)
    themselves; a loop that simply writes ``for batch in loader`` once per epoch still gets a
    fresh shuffle and a fresh window offset every epoch (epoch 0, 1, 2, ...).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._next_epoch = 0
        self._epoch_chosen = False

    def __iter__(self):
        if self._epoch_chosen:
            self._epoch_chosen = False
        else:
            _apply_epoch(self, self._next_epoch, 0)
            self._next_epoch += 1
        return super().__iter__()


def _apply_epoch(loader: DataLoader, epoch: int, start_sample: int, global_start: int | None = None) -> None:
    for target in (loader.dataset, loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        set_epoch = getattr(target, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
    sampler = loader.sampler
    if isinstance(sampler, ResumableSampler):
        if global_start is not None:
            sampler.set_global_start(global_start)
        else:
            sampler.set_start(start_sample)
    elif start_sample or global_start:
        raise ConfigError("resuming part-way into an epoch needs a loader made by create_dataloader")


def set_loader_epoch(
    loader: DataLoader, epoch: int, start_batch: int = 0, start_sample: int | None = None
) -> None:
    """Start ``epoch`` on ``loader`` (sampler order and dataset offset), skipping ``start_batch`` batches.

    The Trainer calls this at each epoch start and, on resume, with the batch index it stopped at;
    the batches that follow are exactly those an uninterrupted run would have seen.
    ``start_sample`` (instead of ``start_batch``): skip that many samples of the epoch counted over
    all ranks, for a run resumed on another number of processes than it was saved by.
    """
    _apply_epoch(loader, epoch, start_batch * (loader.batch_size or 1), start_sample)
    if isinstance(loader, EpochAwareDataLoader):
        loader._epoch_chosen = True
        loader._next_epoch = int(epoch) + 1


MAX_WORKERS_PER_CPU = 4


def create_dataloader(
    dataset: Dataset,
    batch_size: int,
    collate_fn: Any = None,
    shuffle: bool | None = None,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader over ``dataset`` with a seeded :class:`ResumableSampler`.

    ``shuffle=None`` shuffles training-like datasets (a :class:`TokenWindowDataset` with random
    offsets, or any other dataset) and keeps validation ones (offset 0) in order.
    ``drop_last=None`` drops a last incomplete batch when shuffling and there are enough samples
    for at least one full batch per rank (steady batch shapes); validation keeps every sample.
    ``rank`` / ``world_size`` shard the samples for data-parallel training. ``collate_fn``
    defaults to :class:`DataCollator` without a tokenizer (padding id 0).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    most = MAX_WORKERS_PER_CPU * (os.cpu_count() or 1)
    if num_workers > most:  # each worker is a process with a copy of this one: a million is a crash
        raise ConfigError(
            f"data.num_workers {num_workers} is more than {MAX_WORKERS_PER_CPU} per CPU of this machine "
            f"({os.cpu_count()} CPUs); use at most {most}"
        )
    if shuffle is None:
        shuffle = bool(getattr(dataset, "random_offset", True))
    num_samples = len(dataset)  # type: ignore[arg-type]
    if drop_last is None:
        drop_last = shuffle and num_samples // world_size >= batch_size
    sampler = ResumableSampler(
        num_samples, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, drop_last=False
    )
    return EpochAwareDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn if collate_fn is not None else DataCollator(),
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        # Fresh workers each epoch: they receive the dataset with this epoch's offset.
        persistent_workers=False,
    )
