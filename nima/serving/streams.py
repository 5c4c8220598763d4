"""Running a plan on the engine from the event loop: whole answers, or server-sent events.

The engine's thread hands each event to the event loop through a :class:`Mailbox` (one wake-up of
the loop for all the events of a step), into one asyncio queue per request; the loop never waits
on the engine. A task per request listens for its client going away, and then cancels its jobs,
which frees their rows at the engine's next step.

A stream is ``data: {json}`` events, then ``data: [DONE]``. An error after the stream has begun
(the server shutting down) is one ``data: {"error": {...}}`` event that ends it, without
``[DONE]``: the ``openai`` client raises it as an APIError.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nima.serving.engine import Engine, EngineBusy, Failed, Finished, Job
from nima.serving.plans import Plan
from nima.serving.schemas import APIError

Chunk = dict[str, Any]


@dataclass(frozen=True)
class Answer:
    """One choice, finished."""

    text: str
    finish_reason: str
    completion_tokens: int


class Mailbox:
    """Events from the engine's thread to one event loop: those that arrive together (a step's
    tokens for every request) are delivered with one wake-up of the loop, not one each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: deque[tuple[asyncio.Queue, Any]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, queue: asyncio.Queue, item: Any) -> None:
        """Put ``item`` into ``queue`` on the loop (from any thread)."""
        with self._lock:
            self._items.append((queue, item))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def _deliver(self) -> None:
        with self._lock:
            items, self._items, self._scheduled = self._items, deque(), False
        for queue, item in items:
            queue.put_nowait(item)


class Run:
    """A plan's jobs on the engine, and the queue their events arrive in as ``(choice, event)``.

    ``receive`` is the request's ASGI receive channel (its body already read): a task listens on
    it for the client going away, and then cancels the jobs at once."""

    def __init__(self, engine: Engine, plan: Plan, mailbox: Mailbox, receive: Callable[[], Awaitable[Any]]):
        self.plan = plan
        self.events: asyncio.Queue = asyncio.Queue()

        def emitter(index: int) -> Callable[[Any], None]:
            def emit(event: Any) -> None:
                mailbox.post(self.events, (index, event))

            return emit

        self.jobs: list[Job] = []
        try:
            for i, (p, sampling) in enumerate(plan.choices):
                self.jobs.append(engine.submit(Job(plan.prompts[p], sampling, emitter(i), stop=plan.stop)))
        except EngineBusy as err:
            self.cancel()
            raise APIError(503, str(err), type="server_error", code="server_busy") from None
        self._watch = asyncio.ensure_future(self._watch_for_disconnect(receive))

    async def _watch_for_disconnect(self, receive: Callable[[], Awaitable[Any]]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.cancel()
        self.events.put_nowait(None)

    def cancel(self) -> None:
        """Stop every job that has not finished (a no-op for the finished ones)."""
        for job in self.jobs:
            job.cancel()

    def close(self) -> None:
        """The answer is over (or abandoned): stop the jobs and the disconnect watch."""
        self.cancel()
        self._watch.cancel()

    async def next_event(self) -> tuple[int, Any] | None:
        """The next ``(choice, event)``, or None once the client has gone away."""
        if not self.events.empty():
            return self.events.get_nowait()
        return await self.events.get()

    def ready_events(self) -> list[tuple[int, Any]]:
        """The events already waiting (none to wait for)."""
        ready = []
        while not self.events.empty():
            ready.append(self.events.get_nowait())
        return ready


def failure(event: Failed) -> APIError:
    """The APIError for a job that failed: 503 while shutting down, else 500."""
    if "shutting down" in event.message:
        return APIError(503, event.message, type="server_error", code="server_shutting_down")
    return APIError(500, event.message, type="server_error", code="server_error")


async def collect(run: Run) -> list[Answer]:
    """Every choice of ``run``, finished (an APIError when one fails or the client goes away)."""
    texts: list[list[str]] = [[] for _ in run.jobs]
    answers: list[Answer | None] = [None] * len(run.jobs)
    try:
        while any(a is None for a in answers):
            got = await run.next_event()
            if got is None:  # nobody to answer
                raise APIError(499, "the client closed the request", code="client_closed_request")
            index, event = got
            if isinstance(event, str):
                texts[index].append(event)
            elif isinstance(event, Finished):
                answers[index] = Answer("".join(texts[index]), event.reason, event.completion_tokens)
            elif isinstance(event, Failed):
                raise failure(event)
    finally:
        run.close()
    return answers  # type: ignore[return-value]


def to_json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def sse(data: Chunk | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    return f"data: {data if isinstance(data, str) else to_json(data)}\n\n".encode()


@dataclass
class ChunkShapes:
    """How an endpoint shapes its stream's chunks: the ones that open each choice, the one for a
    piece of text, the one that ends a choice, and the last one with ``usage``."""

    opening: Callable[[int], list[Chunk]]
    piece: Callable[[int, str], Chunk]
    closing: Callable[[int, str], Chunk]
    usage: Callable[[dict[str, int]], Chunk]
    strip_leading_spaces: bool = False
    """Drop the spaces a choice's text starts with (the plain chat template's answer)."""


class _Pieces:
    """The events of text pieces, the hot path of a stream: each choice's chunk is serialized once
    with a mark where the text goes, and each piece's JSON string is spliced in."""

    MARK = "\ue000nima-piece\ue000"

    def __init__(self, shapes: ChunkShapes, extra: Chunk) -> None:
        self.shapes, self.extra = shapes, extra
        self.templates: dict[int, tuple[str, str]] = {}

    def event(self, index: int, text: str) -> bytes:
        if index not in self.templates:
            whole = to_json({**self.shapes.piece(index, self.MARK), **self.extra})
            before, _, after = whole.partition(to_json(self.MARK))
            self.templates[index] = (before, after)
        before, after = self.templates[index]
        return f"data: {before}{to_json(text)}{after}\n\n".encode()


async def events(run: Run, shapes: ChunkShapes) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed request; the jobs are cancelled however it ends."""
    usage_null = {"usage": None} if run.plan.include_usage else {}
    pieces = _Pieces(shapes, usage_null)
    started = [not shapes.strip_leading_spaces] * len(run.jobs)
    done, tokens = [False] * len(run.jobs), [0] * len(run.jobs)
    try:
        for i in range(len(run.jobs)):
            for chunk in shapes.opening(i):
                yield sse({**chunk, **usage_null})
        while not all(done):
            got = await run.next_event()
            if got is None:
                return  # the client went away
            out = []  # the events that are ready go out in one write (a client that fell behind)
            for index, event in [got, *run.ready_events()]:
                if isinstance(event, str):
                    if not started[index]:
                        event = event.lstrip(" ")
                        if not event:
                            continue
                        started[index] = True
                    out.append(pieces.event(index, event))
                elif isinstance(event, Finished):
                    done[index], tokens[index] = True, event.completion_tokens
                    out.append(sse({**shapes.closing(index, event.reason), **usage_null}))
                elif isinstance(event, Failed):
                    yield b"".join(out) + sse(failure(event).body())
                    return
            yield b"".join(out)
        if run.plan.include_usage:
            yield sse(shapes.usage(run.plan.usage(tokens)))
        yield sse("[DONE]")
    finally:
        run.close()
