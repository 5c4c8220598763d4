"""The serving engine's continuous batching: a job that arrives while others run joins them at the
next step and gets the answer it gets alone; finished, stopped and cancelled jobs free their rows
at once; shutting down fails every job still waiting or running."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch
from tiny import model_config

from nima.data.tokenizer import ByteTokenizer
from nima.inference import SamplingSettings, generate_text
from nima.models import create_model
from nima.models.batch_decoding import RowSampling
from nima.serving.engine import Engine, EngineBusy, Failed, Finished, Job


@pytest.fixture(scope="module")
def tok() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return create_model(model_config(tok.vocab_size, max_seq_len=128, init_std=0.3)).eval()


class Collector:
    """A job's events, and an event set once it has ended."""

    def __init__(self) -> None:
        self.events: list = []
        self.ended = threading.Event()

    def __call__(self, event) -> None:
        self.events.append(event)
        if isinstance(event, (Finished, Failed)):
            self.ended.set()

    @property
    def text(self) -> str:
        return "".join(e for e in self.events if isinstance(e, str))

    @property
    def end(self):
        return self.events[-1]


def job(tok, prompt: str, sampling: RowSampling, **kwargs) -> tuple[Job, Collector]:
    seen = Collector()
    return Job(tok.encode(prompt), replace(sampling, eos_token_id=tok.eos_token_id), seen, **kwargs), seen


def expected(model, tok, prompt: str, s: RowSampling, stop=()) -> str:
    settings = SamplingSettings(
        max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, seed=s.seed, stop=stop
    )
    return generate_text(model, tok, prompt, settings)


def test_a_job_arriving_mid_generation_joins_the_running_batch(model, tok):
    engine = Engine(model, tok, max_batch=4).start()
    try:
        first_sampling = RowSampling(max_new_tokens=80, temperature=1.0, top_k=40, seed=1)
        late_sampling = RowSampling(max_new_tokens=20, temperature=0.7, seed=2)
        log: list[tuple[str, object]] = []
        first, first_seen = job(tok, "First", first_sampling)
        late, late_seen = job(tok, "The late one", late_sampling)

        def first_emit(event) -> None:
            log.append(("first", event))
            first_seen(event)
            if len(first_seen.events) == 5:  # the first job is running: the second arrives now
                engine.submit(late)

        def late_emit(event) -> None:
            log.append(("late", event))
            late_seen(event)

        first.emit, late.emit = first_emit, late_emit
        engine.submit(first)
        assert first_seen.ended.wait(30) and late_seen.ended.wait(30)
        assert first_seen.text == expected(model, tok, "First", first_sampling)
        assert late_seen.text == expected(model, tok, "The late one", late_sampling)
        # The late job ran alongside the first and ended long before it: it did not wait.
        ends = [who for who, event in log if isinstance(event, Finished)]
        assert ends == ["late", "first"]
        first_texts_before_late_ended = [
            who for who, event in log[: log.index(("late", late_seen.end))] if who == "first"
        ]
        assert len(first_texts_before_late_ended) < len(first_seen.events) - 1
    finally:
        engine.shutdown()


def test_jobs_interleave_and_each_gets_its_own_answer(model, tok):
    engine = Engine(model, tok, max_batch=3).start()
    try:
        samplings = [RowSampling(max_new_tokens=30 + 5 * i, temperature=0.9, seed=i) for i in range(5)]
        prompts = [f"prompt number {i}" for i in range(5)]
        jobs = [job(tok, p, s) for p, s in zip(prompts, samplings, strict=True)]
        for j, _ in jobs:  # 5 jobs, 3 rows: two wait, then take the rows the first ones free
            engine.submit(j)
        for (_, seen), p, s in zip(jobs, prompts, samplings, strict=True):
            assert seen.ended.wait(30)
            assert seen.text == expected(model, tok, p, s)
            assert seen.end == Finished("length", s.max_new_tokens) or seen.end.reason == "stop"
        assert engine.running == 0 and engine.waiting == 0
    finally:
        engine.shutdown()


def test_a_stop_string_ends_the_job_and_frees_its_row(model, tok):
    engine = Engine(model, tok, max_batch=1).start()
    try:
        sampling = RowSampling(max_new_tokens=60, temperature=0)
        full = expected(model, tok, "abc", sampling)
        stop = full[10:12]
        j, seen = job(tok, "abc", sampling, stop=(stop,))
        engine.submit(j)
        assert seen.ended.wait(30)
        assert seen.text == full[: full.index(stop)] and seen.end.reason == "stop"
        assert seen.end.completion_tokens < 60
    finally:
        engine.shutdown()


def test_a_cancelled_job_frees_its_row_for_the_next(model, tok):
    engine = Engine(model, tok, max_batch=1).start()
    try:
        long, long_seen = job(tok, "long", RowSampling(max_new_tokens=120, temperature=1.0, seed=0))
        cancel_after = threading.Event()

        def emit(event) -> None:
            long_seen(event)
            if len(long_seen.events) == 3:
                long.cancel()
                cancel_after.set()

        long.emit = emit
        short, short_seen = job(tok, "short", RowSampling(max_new_tokens=5, temperature=0))
        engine.submit(long)
        engine.submit(short)  # waits for the only row
        assert short_seen.ended.wait(30) and cancel_after.is_set()
        assert isinstance(short_seen.end, Finished)
        assert not long_seen.ended.is_set()  # a cancelled job hears nothing more
        assert len(long_seen.events) < 10
    finally:
        engine.shutdown()


def test_shutdown_fails_running_and_waiting_jobs(model, tok):
    engine = Engine(model, tok, max_batch=1)  # not started: everything stays queued
    jobs = [job(tok, "x", RowSampling(max_new_tokens=10)) for _ in range(3)]
    for j, _ in jobs:
        engine.submit(j)
    engine.start()
    engine.shutdown("going away")
    for _, seen in jobs:
        assert seen.ended.wait(10)
        assert isinstance(seen.end, (Finished, Failed))
    assert any(isinstance(seen.end, Failed) and seen.end.message == "going away" for _, seen in jobs)
    with pytest.raises(EngineBusy, match="going away"):
        engine.submit(job(tok, "x", RowSampling(max_new_tokens=1))[0])


def test_a_full_queue_is_refused(model, tok):
    engine = Engine(model, tok, max_batch=1, max_waiting=2)
    for _ in range(2):
        engine.submit(job(tok, "x", RowSampling(max_new_tokens=1))[0])
    with pytest.raises(EngineBusy, match="waiting"):
        engine.submit(job(tok, "x", RowSampling(max_new_tokens=1))[0])
    engine.shutdown()
