"""Stop sequences: end a continuation where the decoded text reaches one of a few strings.

Matching is on the decoded text, so a stop string may span several tokens (or be part of one),
and it never cuts a character in half: the stream decoder hands out whole characters only. The
stop string itself is not returned (as in the OpenAI API). While streaming, only the characters
that could still be the beginning of a stop string are held back; everything before them is
handed out at once.
"""

from __future__ import annotations

from collections.abc import Iterable

from nima.errors import ConfigError


def check_stop_strings(stop: str | Iterable[str] | None, limit: int | None = None) -> tuple[str, ...]:
    """The stop strings as a tuple (``None`` -> none, one string -> one); ConfigError for an empty
    string or more than ``limit`` of them."""
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ConfigError(f"a stop sequence must be a non-empty string, got {s!r}")
    if limit is not None and len(stops) > limit:
        raise ConfigError(f"at most {limit} stop sequences, got {len(stops)}")
    return stops


class StopMatcher:
    """Feed text pieces with :meth:`push`; it returns the text that is safe to hand out and whether
    a stop string was reached (text from the stop string on is dropped). :meth:`flush` returns what
    was held back once the text ends without a stop string."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = check_stop_strings(tuple(stops))
        self.held = ""
        self.stopped = False

    def push(self, piece: str) -> tuple[str, bool]:
        """``(text to hand out, stopped)`` after ``piece``; after a stop, everything is ignored."""
        if self.stopped:
            return "", True
        text = self.held + piece
        if not self.stops:
            self.held = ""
            return text, False
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return text[: min(hits)], True
        keep = self._longest_open_prefix(text)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """The held-back text, once no more text comes (no stop string was completed)."""
        text, self.held = ("" if self.stopped else self.held), ""
        return text

    def _longest_open_prefix(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string (and could still
        grow into it)."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
