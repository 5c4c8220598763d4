"""Rows of different lengths decoding together: ragged batches and continuous batching.

A :class:`BatchDecoder` holds up to ``max_rows`` rows in one :class:`RowKVCache`; each row is a
prompt with its own sampling settings, random generator and length. A row joins with :meth:`add`:
its prompt, all but the last token, is prefilled into its row of the cache on its own. Each
:meth:`~BatchDecoder.step` then feeds every row's latest token at the row's own position in one
batched model call and samples each row's next token with the row's own settings. A row leaves
(finished or cancelled) with :meth:`~BatchDecoder.remove`, which frees its place at once; rows join
and leave between any two steps (what a server's continuous batching needs).

Each row's tokens are those of generating it alone with :func:`nima.models.generation.generate`
(its prompt, settings and seed): the same positions, the same attention (a mask hides the other
rows' longer pasts), its own ``torch.Generator``, and the same cache rebuild from the most recent
``max_seq_len // 2`` tokens when the row's context is full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from nima.errors import CheckpointError, ConfigError
from nima.models.attention import RowKVCache
from nima.models.sampling import CausalLM, apply_repetition_penalty, check_sampling, next_token_probs


@dataclass(frozen=True)
class RowSampling:
    """How one row is sampled (the arguments of :func:`nima.models.generation.generate`)."""

    max_new_tokens: int
    """Tokens to add at most (fewer when ``eos_token_id`` comes first)."""
    temperature: float = 1.0
    """Softmax temperature; 0 = greedy."""
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    eos_token_id: int | None = None
    """The row ends after producing this id (which is kept)."""
    seed: int | None = None
    """Seeds the row's own torch.Generator (None: torch's global RNG)."""


@dataclass(eq=False)
class Row:
    """One prompt being continued. ``tokens`` is the prompt followed by the new tokens."""

    tokens: list[int]
    prompt_length: int
    sampling: RowSampling
    generator: torch.Generator | None = None
    finish_reason: str | None = None
    """None while running; ``"eos"`` or ``"length"`` once finished."""
    tag: Any = None
    """Whatever the caller attached (a server's request, an index)."""
    started: bool = field(default=False, repr=False)

    @property
    def new_tokens(self) -> list[int]:
        return self.tokens[self.prompt_length :]

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class BatchDecoder:
    """Continue up to ``max_rows`` prompts of any lengths together, one token per row per step.

    The model should be in eval mode; the decoder runs it without gradients. ``add`` checks a
    row's settings and prompt (ConfigError); ``step`` raises CheckpointError when the model's
    scores are not finite (damaged weights).
    """

    def __init__(self, model: CausalLM, max_rows: int) -> None:
        if max_rows < 1:
            raise ConfigError(f"max_rows must be at least 1, got {max_rows}")
        self.model = model
        dtype = next(model.parameters()).dtype
        self.cache = RowKVCache.for_config(model.config, max_rows, device=model.device, dtype=dtype)
        self.window = model.config.max_seq_len
        self._rows: list[Row] = []

    @property
    def rows(self) -> list[Row]:
        """The running rows, in cache order (a copy)."""
        return list(self._rows)

    @property
    def free(self) -> int:
        """Rows that can still join."""
        return self.cache.max_rows - len(self._rows)

    def add(self, prompt: Sequence[int], sampling: RowSampling, tag: Any = None) -> Row:
        """Start continuing ``prompt`` (token ids); returns its row, already finished when
        ``max_new_tokens`` is 0 (it then takes no place)."""
        s = sampling
        check_sampling(s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.repetition_penalty, s.seed)
        ids = [int(t) for t in prompt]
        vocab = self.model.config.vocab_size
        if not ids:
            raise ConfigError("a prompt must hold at least one token id")
        if min(ids) < 0 or max(ids) >= vocab:
            raise ConfigError(f"the prompt holds token ids outside 0..{vocab - 1} (model.vocab_size={vocab})")
        generator = None
        if s.seed is not None and s.temperature != 0:
            generator = torch.Generator(device=self.model.device).manual_seed(s.seed)
        row = Row(tokens=ids, prompt_length=len(ids), sampling=s, generator=generator, tag=tag)
        if s.max_new_tokens == 0:
            row.finish_reason = "length"
            return row
        if not self.free:
            raise ConfigError(f"the batch is full ({self.cache.max_rows} rows); remove a row first")
        self._rows.append(row)
        self._prefill(len(self._rows) - 1, ids[-self.window :])
        return row

    def remove(self, row: Row) -> None:
        """Take ``row`` out (finished or cancelled); its place is free for the next :meth:`add`."""
        i = self._rows.index(row)
        last = len(self._rows) - 1
        if i != last:  # keep the rows packed: the last row moves into the freed place
            self.cache.move(last, i)
            self._rows[i] = self._rows[last]
        self._rows.pop()
        self.cache.lengths[last] = 0

    def step(self) -> list[tuple[Row, int]]:
        """One new token for every running row: ``[(row, token_id), ...]``. Rows that finish get
        their ``finish_reason`` but stay until :meth:`remove`; finished rows must be removed first."""
        rows = self._rows
        if not rows:
            return []
        if any(row.done for row in rows):
            raise RuntimeError("remove finished rows before the next step")
        for i, row in enumerate(rows):
            if self.cache.lengths[i] >= self.window:  # full: rebuild from the recent half window
                self.cache.lengths[i] = 0
                self._prefill(i, row.tokens[-max(1, self.window // 2) :])
        last = torch.tensor([[row.tokens[-1]] for row in rows], device=self.model.device)  # (R, 1)
        with torch.no_grad():
            self.cache.begin_step(len(rows))
            logits = self.model.last_token_logits(last, self.cache)  # (R, V)
            first = [i for i, row in enumerate(rows) if not row.started]
            if first and not bool(torch.isfinite(logits[first]).all()):
                raise CheckpointError(
                    "the model's next-token scores are nan or inf: its weights are damaged (or far too "
                    "large), so it cannot generate; use another checkpoint"
                )
            picks = self._sample(logits).tolist()
        out = []
        for row, token in zip(rows, picks, strict=True):
            row.started = True
            row.tokens.append(token)
            s = row.sampling
            if s.eos_token_id is not None and token == s.eos_token_id:
                row.finish_reason = "eos"
            elif len(row.tokens) - row.prompt_length >= s.max_new_tokens:
                row.finish_reason = "length"
            out.append((row, token))
        return out

    def _prefill(self, i: int, context: list[int]) -> None:
        """Fill row ``i`` of the cache with all of ``context`` but its last token (which the next
        step feeds, like every row's latest token)."""
        if len(context) > 1:
            view = self.cache.row(i)
            with torch.no_grad():
                self.model.last_token_logits(torch.tensor([context[:-1]], device=self.model.device), view)
            self.cache.lengths[i] = view.length

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token (R,) with its own settings and generator.

        Rows with the same temperature, top-k and top-p are filtered together (a row's
        probabilities do not depend on the others); each row then draws with its own generator,
        as it would alone."""
        rows = self._rows
        penalized = [i for i, row in enumerate(rows) if row.sampling.repetition_penalty != 1.0]
        if penalized:
            logits = logits.clone()
            for i in penalized:
                seen = torch.tensor([rows[i].tokens], device=logits.device)
                logits[i] = apply_repetition_penalty(
                    logits[i : i + 1], seen, rows[i].sampling.repetition_penalty
                )[0]
        groups: dict[tuple[float, int | None, float | None], list[int]] = {}
        for i, row in enumerate(rows):
            s = row.sampling
            groups.setdefault((s.temperature, s.top_k, s.top_p), []).append(i)
        if len(groups) == 1 and rows[0].sampling.temperature == 0:
            return logits.argmax(dim=-1)
        picks = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        for (temperature, top_k, top_p), members in groups.items():
            if temperature == 0:
                picks[members] = logits[members].argmax(dim=-1)
                continue
            probs = next_token_probs(logits[members], temperature, top_k, top_p)
            # torch.multinomial draws one sample as argmax(p / q), q ~ Exp(1) (its fast path for
            # one sample): the same draws from each row's own generator, then one division and
            # argmax for the group, give each row the token multinomial gives it alone, without a
            # call (and, on a GPU, a sync) per row.
            q = torch.empty_like(probs)
            for j, i in enumerate(members):
                q[j].exponential_(1, generator=rows[i].generator)
            picks[members] = (probs / q).argmax(dim=-1)
        return picks
