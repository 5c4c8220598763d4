"""The server's generation engine: continuous batching on a thread of its own.

Requests come in as :class:`Job` s (token ids, sampling settings, stop strings) from any thread,
usually the web server's event loop. The engine's thread runs one loop: admit the jobs that wait
(each prefilled into a free row of a :class:`~nima.models.batch_decoding.BatchDecoder`), take out
the cancelled ones, run one batched step for every running row, and hand each job its new text.
So a request that arrives while others are generating joins them at the next step, and a row that
finishes, stops at a stop string or is cancelled (its client went away) frees its place at once.

Text is decoded here, per job, with the tokenizer's stream decoder and a
:class:`~nima.inference.stop_strings.StopMatcher`, so that a stop string ends the row at the step
that completes it. A job's events go to its ``emit`` callback, from the engine thread: pieces of
text, then exactly one :class:`Finished` or :class:`Failed`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nima.errors import NimaError
from nima.inference.generate import stream_decoder
from nima.inference.stop_strings import StopMatcher
from nima.models.batch_decoding import BatchDecoder, Row, RowSampling

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finished:
    """A job's last event when it ended normally."""

    reason: str
    """``"stop"`` (end-of-text token or a stop string) or ``"length"`` (max_new_tokens reached)."""
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    """A job's last event when it could not finish (bad model output, server shutting down)."""

    message: str


Event = str | Finished | Failed
"""What a job's ``emit`` receives: a piece of text, then one Finished or Failed."""


@dataclass(eq=False)
class Job:
    """One continuation to produce (one choice of a request)."""

    prompt_ids: list[int]
    sampling: RowSampling
    emit: Callable[[Event], None]
    """Called from the engine thread with each event; must be quick and must not raise."""
    stop: tuple[str, ...] = ()
    cancelled: bool = False
    """Set by :meth:`cancel` (from any thread); the engine drops the row at its next step."""
    completion_tokens: int = 0
    submitted: float = field(default_factory=time.perf_counter)
    _decoder: Any = None
    _stops: StopMatcher | None = None
    _row: Row | None = None

    def cancel(self) -> None:
        """Stop producing this job (its client went away); nothing more is emitted."""
        self.cancelled = True


class Engine:
    """Continuous batching of up to ``max_batch`` jobs over ``model`` on one background thread.

    ``submit`` queues a job (from any thread); ``start`` and ``shutdown`` begin and end the thread.
    ``max_waiting`` bounds the queue: beyond it ``submit`` raises :class:`EngineBusy`.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_batch: int = 8, max_waiting: int = 1024):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.decoder = BatchDecoder(model, max_batch)
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self._waiting: deque[Job] = deque()
        self._wake = threading.Condition()
        self._closing: str | None = None
        self._thread: threading.Thread | None = None
        self.steps = 0
        """Batched steps run so far (for tests and statistics)."""

    # -- from any thread ----------------------------------------------------------------------

    def start(self) -> Engine:
        """Start the engine thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nima-engine", daemon=True)
            self._thread.start()
        return self

    def submit(self, job: Job) -> Job:
        """Queue ``job``; it joins the running batch at the next step with a free row."""
        with self._wake:
            if self._closing is not None:
                raise EngineBusy(self._closing)
            if len(self._waiting) >= self.max_waiting:
                raise EngineBusy(f"{len(self._waiting)} requests are already waiting; try again later")
            self._waiting.append(job)
            self._wake.notify()
        return job

    def shutdown(self, message: str = "the server is shutting down", timeout: float = 10.0) -> None:
        """Fail every waiting and running job with ``message`` and stop the thread."""
        with self._wake:
            if self._closing is None:
                self._closing = message
            self._wake.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> int:
        """Jobs in the batch now."""
        return len(self.decoder.rows)

    @property
    def waiting(self) -> int:
        """Jobs queued for a free row."""
        return len(self._waiting)

    # -- the engine thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                admitted = self._next_jobs()
                if admitted is None:
                    break
                for job in admitted:
                    self._admit(job)
                for row in self.decoder.rows:
                    if row.tag.cancelled:
                        self.decoder.remove(row)
                if self.decoder.rows:
                    self._step()
        except BaseException as err:  # never leave a client waiting on a dead thread
            log.exception("generation engine failed")
            self._closing = self._closing or f"the generation engine failed: {err}"
        finally:
            self._fail_all(self._closing or "the server is shutting down")

    def _next_jobs(self) -> list[Job] | None:
        """Jobs to admit now (waits while there is nothing to do); None when shutting down."""
        with self._wake:
            while not self._waiting and not self.decoder.rows and self._closing is None:
                self._wake.wait()
            if self._closing is not None:
                return None
            jobs = []
            while self._waiting and len(jobs) < self.decoder.free:
                job = self._waiting.popleft()
                if not job.cancelled:
                    jobs.append(job)
            return jobs

    def _admit(self, job: Job) -> None:
        try:
            job._decoder = stream_decoder(self.tokenizer)
            job._stops = StopMatcher(job.stop)
            job._row = self.decoder.add(job.prompt_ids, job.sampling, tag=job)
        except (NimaError, RuntimeError) as err:  # checked before, so a surprise: fail this job only
            job.emit(Failed(str(err)))
            return
        if job._row.done:  # max_new_tokens 0
            job.emit(Finished("length", 0))

    def _step(self) -> None:
        try:
            produced = self.decoder.step()
        except (NimaError, RuntimeError) as err:
            log.error("generation step failed: %s", err)
            for row in self.decoder.rows:
                row.tag.emit(Failed(f"generation failed: {err}"))
                self.decoder.remove(row)
            return
        self.steps += 1
        for row, token in produced:
            job: Job = row.tag
            job.completion_tokens += 1
            if job.cancelled:
                self.decoder.remove(row)
                continue
            if row.finish_reason == "eos":  # the end-of-text token is not text
                self._finish(job, "stop", job._decoder.flush())
                continue
            text, stopped = job._stops.push(job._decoder.push(token))
            if stopped:
                if text:
                    job.emit(text)
                self._finish(job, "stop", None)
            elif row.done:
                self._finish(job, "length", text + job._decoder.flush())
            elif text:
                job.emit(text)

    def _finish(self, job: Job, reason: str, tail: str | None) -> None:
        """End ``job``: hand out its last text (through the stop strings) and free its row."""
        if tail is not None:
            text, stopped = job._stops.push(tail)
            text = text if stopped else text + job._stops.flush()
            if text:
                job.emit(text)
        job.emit(Finished(reason, job.completion_tokens))
        self.decoder.remove(job._row)

    def _fail_all(self, message: str) -> None:
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
            if self._closing is None:
                self._closing = message
        for row in self.decoder.rows:
            self.decoder.remove(row)
            if not row.tag.cancelled:
                row.tag.emit(Failed(message))
        for job in waiting:
            if not job.cancelled:
                job.emit(Failed(message))


class EngineBusy(NimaError):
    """The engine cannot take a job now (too many waiting, or shutting down)."""
