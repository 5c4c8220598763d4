"""Split a token stream into the windows that evaluation feeds the model.

Token ``j`` (for ``j >= 1``) is predicted from the tokens before it; token 0 has no context and is
never scored. A window of ``context`` input tokens starting at ``begin`` predicts targets
``begin + 1 .. end``. With ``stride == context`` the windows do not overlap and every target is
scored once, the first targets of each window with little context. With a smaller stride the
windows overlap and only the last ``stride`` targets of each window are scored (each with at least
``context - stride`` tokens of context): slower, and closer to the model's real ability.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """Inputs are ``tokens[begin:end]``, targets ``tokens[begin + 1:end + 1]``; targets at absolute
    positions ``>= score_from`` are scored, earlier ones are context only."""

    begin: int
    end: int
    score_from: int

    @property
    def length(self) -> int:
        return self.end - self.begin

    @property
    def n_scored(self) -> int:
        return self.end + 1 - self.score_from


def count_windows(n_tokens: int, context: int, stride: int) -> int:
    """How many windows :func:`plan_windows` yields (for progress bars)."""
    if n_tokens < 2:
        return 0
    return 1 + max(0, -(-(n_tokens - 1 - context) // stride))


def plan_windows(n_tokens: int, context: int, stride: int) -> Iterator[Window]:
    """Windows covering every target of an ``n_tokens`` stream exactly once.

    ``1 <= stride <= context`` (a larger stride would leave targets unscored); the caller checks
    user input, this function asserts it.
    """
    assert context >= 1 and 1 <= stride <= context, (context, stride)
    next_target = 1  # first target position not scored yet
    begin = 0
    while next_target < n_tokens:
        end = min(begin + context, n_tokens - 1)
        yield Window(begin=begin, end=end, score_from=next_target)
        next_target = end + 1
        begin += stride
