"""Helpers for the tests that train: the tiny model on prepared data, small loaders, a quick
TrainingConfig, a loss recorder, the exact-resume run, and a script started in the checkout.

The prepared tiny Shakespeare these take comes from the ``prepared`` fixture in conftest.py. A
test module pins the precision it needs, e.g. ``config = partial(training_config, precision="fp32")``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tiny import model_config

from nima.data import DataCollator, TokenWindowDataset, create_dataloader
from nima.models import create_model
from nima.training import Callback, Trainer, TrainingConfig

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(prepared, seed: int = 0, **overrides) -> torch.nn.Module:
    """The tests' tiny model (tiny.TEST_MODEL with ``overrides``) for ``prepared``'s vocabulary,
    initialised from ``seed``."""
    torch.manual_seed(seed)
    return create_model(model_config(prepared.tokenizer.vocab_size, **overrides))


def small_loader(
    prepared,
    batch_size: int = 8,
    tokens: int = 5000,
    shuffle: bool = True,
    split: str = "train",
    max_length: int = 32,
    seed: int = 0,
):
    """Windows of ``max_length`` over the first ``tokens`` tokens of ``split``: shuffled at random
    offsets, or (``shuffle=False``) in order with the last partial window kept."""
    data = np.asarray(prepared.tokens(split)[:tokens])
    dataset = TokenWindowDataset(
        data,
        max_length,
        seed=seed,
        random_offset=shuffle,
        include_partial=not shuffle,
        tokenizer_identity=prepared.tokenizer.identity(),
        prepared_path=prepared.path,
    )
    return create_dataloader(
        dataset, batch_size, collate_fn=DataCollator(prepared.tokenizer), shuffle=shuffle, seed=seed
    )


def split_loader(prepared, split: str = "train", tokens: int = 4000):
    """Batches of 4 windows from ``split``: shuffled for ``train``, in order for any other split."""
    return small_loader(prepared, batch_size=4, tokens=tokens, shuffle=split == "train", split=split)


def training_config(tmp_path: Path, precision: str, **kw: Any) -> TrainingConfig:
    """A short run writing under ``tmp_path / "out"``: 10 steps of 8, logging every step, no
    evaluation, no checkpoints, no progress bar; ``kw`` overrides any field."""
    base = {
        "precision": precision,
        "max_steps": 10,
        "batch_size": 8,
        "learning_rate": 3e-3,
        "output_dir": str(tmp_path / "out"),
        "log_every": 1,
        "eval_every": 0,
        "save_every": 0,
        "progress_bar": False,
        "eval_batches": 4,
    }
    return TrainingConfig(**{**base, **kw})


class StepLosses(Callback):
    """Records each step's loss in ``losses``; stops the run at step ``stop_at`` if one is given."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.losses: dict[int, float] = {}
        self.stop_at = stop_at

    def on_log(self, run, metrics) -> None:
        if "loss" not in metrics:  # the final evaluation's record
            return
        self.losses[run.step] = metrics["loss"]
        if self.stop_at is not None and run.step >= self.stop_at:
            run.request_stop()


def resume_run(
    prepared,
    tmp_path: Path,
    stop_at: int | None,
    resume_from: Path | None = None,
    model_seed: int = 0,
    recorder: StepLosses | None = None,
    *,
    precision: str,
):
    """The exact-resume run: 40 steps of 4 windows with dropout, accumulation, evaluation and
    warmup, stopped at ``stop_at`` (or run to the end) and optionally resumed from ``resume_from``;
    returns ``(trainer, losses by step)``."""
    train = small_loader(prepared, batch_size=4, tokens=2000)  # 15 batches: an odd window ends each epoch
    val = small_loader(prepared, batch_size=8, tokens=600, shuffle=False, split="val")
    cfg = training_config(
        tmp_path,
        precision,
        max_steps=40,
        batch_size=4,
        gradient_accumulation_steps=2,
        eval_every=7,
        save_every=0,
        warmup_steps=5,
    )
    recorder = recorder or StepLosses(stop_at=stop_at)
    trainer = Trainer(
        tiny_model(prepared, seed=model_seed, dropout=0.1), cfg, train, val, callbacks=[recorder]
    )
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
    trainer.train()
    return trainer, recorder.losses


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter's gradient, by name (parameters without one are left out)."""
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def start_until(command: list[str], env: dict[str, str], ready: Callable[[], bool]) -> subprocess.Popen:
    """Start ``command`` in the checkout; return the running job once ``ready()`` holds (the test
    fails if the job ends first or 120 s pass)."""
    job = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not ready():
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.05)
    return job
