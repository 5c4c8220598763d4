"""Evaluation figures: loss in nats per token and what it converts to.

Every figure here derives from one sum: the total negative log-likelihood (in nats) of the scored
tokens. Dividing by the token count gives the loss; dividing by ``ln 2`` times the UTF-8 byte count
of the same text gives bits per byte, which (unlike loss or perplexity) can be compared between
models with different tokenizers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

LN2 = math.log(2.0)


def perplexity(loss: float) -> float:
    """``exp(loss)``: the effective number of equally likely next tokens (inf when it overflows)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def bits_per_unit(total_nats: float, units: int) -> float:
    """Total negative log-likelihood in nats -> bits per unit (byte, character or token)."""
    if units <= 0:
        raise ValueError(f"cannot compute bits per unit over {units} units")
    return total_nats / (LN2 * units)


@dataclass(frozen=True)
class EvalResult:
    """What one evaluation measured. Losses are natural-log (nats) per scored token.

    ``bytes`` / ``chars`` are the UTF-8 byte count and character count of the scored text; they are
    ``None`` (and so are ``bits_per_byte`` / ``bits_per_char``) when no tokenizer was available to
    turn tokens back into text.
    """

    loss: float
    """Mean cross-entropy per scored token, in nats."""
    perplexity: float
    """``exp(loss)``."""
    bits_per_token: float
    """``loss / ln 2``."""
    tokens: int
    """Number of tokens scored (predicted), i.e. the denominator of ``loss``."""
    total_nats: float
    """Sum of the per-token negative log-likelihoods."""
    bits_per_byte: float | None = None
    """``total_nats / (ln 2 * bytes)``: tokenizer-independent."""
    bits_per_char: float | None = None
    """``total_nats / (ln 2 * chars)``."""
    bytes: int | None = None
    chars: int | None = None
    windows: int = 0
    """Number of model calls' worth of sequences (windows or batch rows) scored."""
    context_length: int | None = None
    """Window length in tokens (token-stream evaluation only)."""
    stride: int | None = None
    """Step between window starts; ``== context_length`` means non-overlapping windows."""

    @classmethod
    def from_totals(
        cls,
        total_nats: float,
        tokens: int,
        *,
        n_bytes: int | None = None,
        n_chars: int | None = None,
        windows: int = 0,
        context_length: int | None = None,
        stride: int | None = None,
    ) -> EvalResult:
        """Build the result from the summed negative log-likelihood and the unit counts."""
        if tokens <= 0:
            raise ValueError("nothing was scored: the evaluation data holds fewer than 2 tokens")
        loss = total_nats / tokens
        return cls(
            loss=loss,
            perplexity=perplexity(loss),
            bits_per_token=loss / LN2,
            tokens=tokens,
            total_nats=total_nats,
            bits_per_byte=bits_per_unit(total_nats, n_bytes) if n_bytes else None,
            bits_per_char=bits_per_unit(total_nats, n_chars) if n_chars else None,
            bytes=n_bytes,
            chars=n_chars,
            windows=windows,
            context_length=context_length,
            stride=stride,
        )

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of every field."""
        return asdict(self)

    def format(self) -> str:
        """A short human-readable report, one figure per line."""
        lines = [
            f"loss            {self.loss:.4f} nats/token",
            f"perplexity      {self.perplexity:.3f}",
            f"bits per token  {self.bits_per_token:.4f}",
        ]
        if self.bits_per_char is not None:
            lines.append(f"bits per char   {self.bits_per_char:.4f}  ({self.chars:,} characters)")
        if self.bits_per_byte is not None:
            lines.append(f"bits per byte   {self.bits_per_byte:.4f}  ({self.bytes:,} UTF-8 bytes)")
        scored = f"tokens scored   {self.tokens:,}"
        if self.context_length is not None:
            overlap = "non-overlapping" if self.stride == self.context_length else f"stride {self.stride}"
            windows = f"{self.windows:,} window{'s' if self.windows != 1 else ''}"
            scored += f"  ({windows} of {self.context_length} tokens, {overlap})"
        lines.append(scored)
        return "\n".join(lines)
