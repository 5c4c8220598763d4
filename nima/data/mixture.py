"""Mixtures: several prepared corpora trained on together, each by its weight.

:class:`MixtureDataset` is map-style, and its epoch is a fixed function of ``(seed, epoch)``, so
the loader's sampler, its sharding by rank and exact resume work on it unchanged.
:class:`PreparedMixture` holds the prepared corpora of ``data.mixture`` (one tokenizer for all).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from nima.data.datasets import StackedWindows, TokenWindowDataset
from nima.data.prepared import PreparedData
from nima.data.tokenizer import Tokenizer
from nima.errors import ConfigError

_MIXTURE_STREAM = 0x6D6978  # keeps the mixture's random draws apart from the windows' offsets


class MixtureDataset(Dataset):
    """Windows of several :class:`TokenWindowDataset` s, interleaved by weight.

    An epoch has ``length`` windows (default: all components' windows together). Component ``i``
    supplies ``weight_i / sum(weights)`` of them (rounded; exact counts, not a draw per window),
    at places drawn from ``(seed, epoch)``. Within a component, windows come in the component's
    own order for the epoch (a permutation drawn from ``(seed, epoch, i)``); a component asked for
    more windows than it has goes round its order again, one asked for fewer sees another part of
    it each epoch. Call :meth:`set_epoch` (the loader does) to move to an epoch.
    """

    def __init__(
        self,
        components: Sequence[TokenWindowDataset],
        weights: Sequence[float],
        seed: int = 0,
        length: int | None = None,
    ):
        self.components = list(components)
        if not self.components or len(self.components) != len(weights):
            raise ConfigError(
                f"a mixture needs one weight per dataset, got {len(self.components)} datasets "
                f"and {len(weights)} weights"
            )
        if not all(isinstance(w, (int, float)) and math.isfinite(w) and w > 0 for w in weights):
            raise ConfigError(f"mixture weights must be positive numbers, got {list(weights)}")
        lengths = {c.max_length for c in self.components}
        if len(lengths) > 1:
            raise ConfigError(f"the datasets of a mixture have different max_length: {sorted(lengths)}")
        self.weights = [float(w) for w in weights]
        self.seed = int(seed)
        self.length = int(length) if length is not None else sum(len(c) for c in self.components)
        self.max_length = self.components[0].max_length
        self.random_offset = True  # training data: the loader shuffles it
        self.tokenizer_identity = self.components[0].tokenizer_identity
        self.prepared_path = None  # several folders: checkpoints record none
        self.epoch = 0
        self._plan: tuple[np.ndarray, np.ndarray] | None = None

    def counts(self) -> np.ndarray:
        """Windows per component in an epoch: ``length`` split by weight, largest remainders first."""
        share = np.array(self.weights) / sum(self.weights) * self.length
        counts = np.floor(share).astype(np.int64)
        counts[np.argsort(counts - share, kind="stable")[: self.length - int(counts.sum())]] += 1
        return counts

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for component in self.components:
            component.set_epoch(epoch)
        self._plan = None

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        """``(component, window in it)`` of each item of this epoch (made once per epoch)."""
        if self._plan is None:
            which = np.repeat(np.arange(len(self.components), dtype=np.int32), self.counts())
            which = np.random.default_rng([self.seed, self.epoch, _MIXTURE_STREAM]).permutation(which)
            local = np.empty(self.length, dtype=np.int64)
            for i, component in enumerate(self.components):
                rows = np.flatnonzero(which == i)
                rng = np.random.default_rng([self.seed, self.epoch, _MIXTURE_STREAM, i])
                order = rng.permutation(len(component))
                local[rows] = order[np.arange(len(rows)) % len(order)]
            self._plan = which, local
        return self._plan

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        which, local = self.plan()
        return self.components[int(which[index])][int(local[index])]

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        """The windows of ``indices``, one batched fetch per component (see
        :meth:`TokenWindowDataset.__getitems__`); stacked when they are all full windows."""
        if not indices:
            return []
        which, local = self.plan()
        index = np.asarray(indices, dtype=np.int64)
        picked = which[index]
        out: list[torch.Tensor | None] = [None] * len(indices)
        for i in np.unique(picked).tolist():
            rows = np.flatnonzero(picked == i)
            windows = self.components[i].__getitems__(local[index[rows]].tolist())
            for row, window in zip(rows.tolist(), windows, strict=True):
                out[row] = window
        if any(len(w) != self.max_length + 1 for w in out):  # a short tail: the collator pads it
            return out  # type: ignore[return-value]
        return StackedWindows(torch.stack(out))  # type: ignore[arg-type]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_plan"] = None  # each worker draws the epoch's plan again from (seed, epoch)
        return state

    def __repr__(self) -> str:
        weights = ", ".join(f"{w:g}" for w in self.weights)
        return f"MixtureDataset({len(self.components)} datasets, weights=[{weights}], windows={self.length})"


@dataclass
class PreparedMixture:
    """The prepared corpora of ``data.mixture``, with their weights and their one tokenizer."""

    components: list[PreparedData]
    weights: list[float]
    names: list[str] = field(default_factory=list)
    """How each corpus was named in the config."""

    def __post_init__(self) -> None:
        first = self.components[0].tokenizer.identity()["sha256"]
        names = self.names or [str(d.path) for d in self.components]
        for name, data in zip(names, self.components, strict=True):
            if data.tokenizer.identity()["sha256"] != first:
                raise ConfigError(
                    f"data.mixture: {name} ({data.path}) has another tokenizer than "
                    f"{self.components[0].path}; prepare it with data.tokenizer: {self.tokenizer_path}"
                )

    @property
    def tokenizer(self) -> Tokenizer:
        return self.components[0].tokenizer

    @property
    def tokenizer_path(self) -> Path:
        return self.components[0].tokenizer_path

    @property
    def path(self) -> Path:
        """The first corpus's folder (the tokenizer's); :attr:`components` has them all."""
        return self.components[0].path

    @property
    def meta(self) -> dict[str, Any]:
        """Token counts over all corpora, and the corpora with their weights."""
        return {
            "train_tokens": sum(d.train_tokens for d in self.components),
            "val_tokens": sum(d.val_tokens for d in self.components),
            "mixture": [
                {"path": str(d.path), "weight": w} for d, w in zip(self.components, self.weights, strict=True)
            ],
        }

    def describe(self) -> str:
        pairs = zip(self.components, self.weights, strict=True)
        parts = ", ".join(f"{d.path} (weight {w:g})" for d, w in pairs)
        return f"mixture of {len(self.components)} corpora: {parts}"
