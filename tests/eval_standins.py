"""Tiny stand-ins for the evaluation tests: models and tokenizers with known, exact behaviour.

They follow the contracts of nima.models.GPT (``forward(input_ids, labels) -> .logits/.loss``,
``config.max_seq_len``) and nima.data tokenizers (``encode``/``decode``) without training anything,
so that the evaluation maths can be checked against numbers worked out by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from nima.errors import DataError


@dataclass
class Output:
    logits: torch.Tensor
    loss: torch.Tensor | None


class UniformModel(torch.nn.Module):
    """Predicts every token with probability 1 / vocab_size: loss is exactly ln(vocab_size)."""

    def __init__(self, vocab_size: int, max_seq_len: int = 16) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size, max_seq_len=max_seq_len)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> Output:
        assert input_ids.shape[1] <= self.config.max_seq_len
        logits = torch.zeros(*input_ids.shape, self.config.vocab_size) + 0 * self.dummy
        loss = (
            None
            if labels is None
            else F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        )
        return Output(logits, loss)


class BigramModel(UniformModel):
    """Next-token log-probabilities from bigram counts (add-one smoothed) of a training stream."""

    def __init__(self, vocab_size: int, train_ids: Sequence[int], max_seq_len: int = 16) -> None:
        super().__init__(vocab_size, max_seq_len)
        counts = torch.ones(vocab_size, vocab_size)
        for a, b in zip(train_ids[:-1], train_ids[1:], strict=True):
            counts[a, b] += 1
        self.register_buffer("table", (counts / counts.sum(1, keepdim=True)).log())

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> Output:
        logits = self.table[input_ids] + 0 * self.dummy
        loss = (
            None
            if labels is None
            else F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        )
        return Output(logits, loss)


class PositionModel(UniformModel):
    """Confidence grows with the position in the window: scores depend on how windows are cut."""

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> Output:
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        # Put weight log(1 + pos) on the input token itself (a "copy" guess that sharpens with context).
        logits.scatter_(
            2,
            input_ids.unsqueeze(-1),
            torch.log1p(torch.arange(T, dtype=torch.float)).expand(B, T)[..., None],
        )
        loss = (
            None
            if labels is None
            else F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        )
        return Output(logits, loss)


class CharTok:
    """Character tokenizer over a fixed alphabet; unknown characters raise DataError naming them."""

    kind = "char"

    def __init__(self, alphabet: str) -> None:
        self.chars = sorted(set(alphabet))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)
        self.eos_token_id = None

    def encode(self, text: str) -> list[int]:
        for c in text:
            if c not in self.stoi:
                raise DataError(f"character {c!r} is not in the tokenizer's vocabulary")
        return [self.stoi[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class ByteTok:
    """UTF-8 bytes as tokens 0..255 (a character may span several tokens)."""

    kind = "byte"
    vocab_size = 256
    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def uniform_bits(vocab_size: int) -> float:
    return math.log2(vocab_size)
