"""The numeric guard: every step is checked for nan/inf, a broken step is never applied, and
``training.on_nonfinite`` decides whether the run stops or goes on (training/guard.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tiny import model_config

from nima.errors import ConfigError, TrainingDivergedError
from nima.models import create_model
from nima.training import Callback, Trainer, TrainingConfig

VOCAB = 65


def batches(n: int = 16, batch: int = 4, context: int = 32) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (batch, context + 1), generator=generator)
        out.append({"input_ids": ids[:, :-1], "labels": ids[:, 1:]})
    return out


def poisoned_model(bad_steps: set[int]) -> torch.nn.Module:
    """The tiny model whose loss is nan at the training forwards numbered in ``bad_steps`` (1-based):
    its gradients are then nan too, as in a real blow-up."""
    torch.manual_seed(0)
    model = create_model(model_config(VOCAB))
    forwards = []

    def poison(module, args, output):
        if not module.training:
            return output
        forwards.append(1)
        if len(forwards) in bad_steps:
            output.loss = output.loss * float("nan")
        return output

    model.register_forward_hook(poison)
    return model


class Snapshots(Callback):
    """The weights and AdamW's step count after every optimizer step."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.adam_steps: dict[int, float] = {}
        self.optimizer: torch.optim.Optimizer | None = None  # set once the Trainer has built it

    def on_step(self, run) -> None:
        self.weights[run.step] = {k: v.clone() for k, v in run.model.state_dict().items()}
        first = next(iter(self.optimizer.state.values()))
        self.adam_steps[run.step] = float(first["step"])


def config(tmp_path: Path, **overrides) -> TrainingConfig:
    base = dict(max_steps=12, log_every=10, eval_every=0, save_every=0, precision="fp32",
                save_epoch_checkpoints=False, progress_bar=False)  # fmt: skip
    base["output_dir"] = str(tmp_path / "out")
    return TrainingConfig(**{**base, **overrides})


def records(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "out" / "logs" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_nan_at_a_step_that_is_not_logged_is_never_applied_and_stops_the_run(tmp_path: Path) -> None:
    snapshots = Snapshots()
    trainer = Trainer(poisoned_model({3}), config(tmp_path), batches(), callbacks=[snapshots])
    snapshots.optimizer = trainer.optimizer
    with pytest.raises(TrainingDivergedError) as stop:
        trainer.train()
    message = str(stop.value)
    assert "\n" not in message and "between steps 0 and 10" in message and "first at step 3" in message
    assert "on_nonfinite: skip" in message
    # Step 3 changed nothing: same weights and the same AdamW step count as after step 2.
    assert all(torch.equal(snapshots.weights[3][k], v) for k, v in snapshots.weights[2].items())
    assert snapshots.adam_steps[3] == snapshots.adam_steps[2] == 2
    assert not all(torch.equal(snapshots.weights[4][k], v) for k, v in snapshots.weights[3].items())
    assert all(torch.isfinite(p).all() for p in trainer.raw_model.parameters())
    assert not list((tmp_path / "out").rglob("*.pt"))
    assert trainer.step == 10  # found at the logging step, not at step 3: no host sync per step


def test_skip_goes_on_without_the_broken_step_and_logs_it(tmp_path: Path) -> None:
    snapshots = Snapshots()
    trainer = Trainer(
        poisoned_model({3, 7}), config(tmp_path, on_nonfinite="skip"), batches(), callbacks=[snapshots]
    )
    snapshots.optimizer = trainer.optimizer
    results = trainer.train()
    assert results.steps == 12 and results.skipped_steps == 2
    assert all(torch.equal(snapshots.weights[7][k], v) for k, v in snapshots.weights[6].items())
    assert snapshots.adam_steps[12] == 10
    logged = {r["step"]: r for r in records(tmp_path) if "loss" in r}
    assert logged[10]["skipped_steps"] == 2 and "skipped_steps" not in logged[12]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logged.values())  # skipped losses left out
    assert "| skipped steps | 2 (" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert all(torch.isfinite(p).all() for p in trainer.raw_model.parameters())


def test_skip_stops_after_too_many_broken_steps_in_a_row(tmp_path: Path) -> None:
    cfg = config(tmp_path, on_nonfinite="skip", max_consecutive_skips=4, log_every=5)
    trainer = Trainer(poisoned_model(set(range(4, 100))), cfg, batches())
    with pytest.raises(TrainingDivergedError, match="7 steps in a row up to step 10 had nan or inf"):
        trainer.train()  # at step 5 only 2 in a row: it went on
    assert all(torch.isfinite(p).all() for p in trainer.raw_model.parameters())


def test_a_run_of_broken_steps_across_logging_steps_counts_whole(tmp_path: Path) -> None:
    # Steps 4-6 and 9-11 (log_every 5): never 4 in a row, though 3 on each side of a check.
    cfg = config(tmp_path, on_nonfinite="skip", max_consecutive_skips=4, log_every=5)
    results = Trainer(poisoned_model({4, 5, 6, 9, 10, 11}), cfg, batches()).train()
    assert results.skipped_steps == 6
    cfg = config(tmp_path, on_nonfinite="skip", max_consecutive_skips=4, log_every=5)
    with pytest.raises(TrainingDivergedError, match="4 steps in a row"):  # 4, 5 | 6, 7
        Trainer(poisoned_model({4, 5, 6, 7}), cfg, batches()).train()


def test_an_unfused_optimizer_skips_through_the_host(tmp_path: Path) -> None:
    snapshots = Snapshots()
    trainer = Trainer(
        poisoned_model({3}),
        config(tmp_path, on_nonfinite="skip", optimizer_type="adamw_scale", learning_rate=1e-2),
        batches(),
        callbacks=[snapshots],
    )
    snapshots.optimizer = trainer.optimizer
    assert trainer.train().skipped_steps == 1
    assert all(torch.equal(snapshots.weights[3][k], v) for k, v in snapshots.weights[2].items())


def test_on_nonfinite_is_checked() -> None:
    with pytest.raises(ConfigError, match="on_nonfinite"):
        TrainingConfig(on_nonfinite="ignore")
    with pytest.raises(ConfigError, match="max_consecutive_skips"):
        TrainingConfig(max_consecutive_skips=0)


def test_fp16_loss_scaler_overflows_are_logged_as_skipped_not_as_failures(tmp_path: Path) -> None:
    # fp16 needs a GPU in a real run; its loss scaler works the same on a CPU. A scale far too
    # high makes the first steps overflow: the scaler skips them and halves its scale each time.
    from nima.distributed import DistributedContext
    from nima.runtime import PrecisionChoice, Runtime

    runtime = Runtime(DistributedContext(), torch.device("cpu"), PrecisionChoice("fp16", "cpu", "test"))
    trainer = Trainer(poisoned_model(set()), config(tmp_path, log_every=4), batches(), runtime=runtime)
    trainer.train_step.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**80)
    results = trainer.train()
    assert results.steps == 12 and results.skipped_steps >= 2
    logged = [r for r in records(tmp_path) if "loss" in r]
    assert logged[0]["skipped_steps"] >= 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in logged)
    assert trainer.train_step.scaler.get_scale() < 2.0**80


def test_the_guard_counts_steps_in_batches_as_it_would_one_by_one() -> None:
    # The meter hands the guard its steps' flags in batches (see Meter.record); the counts, the
    # first bad step and the runs in a row (carried across batches and reads) are those of a
    # step-by-step count, for random patterns cut into random batches.
    from nima.training.guard import NonfiniteGuard

    rng = random.Random(0)
    for _ in range(200):
        flags = [rng.random() < rng.choice((0.1, 0.5, 0.9)) for _ in range(rng.randint(1, 40))]
        guard, step, expected = NonfiniteGuard(torch.device("cpu")), 1, ReadByHand()
        while step <= len(flags):
            size = rng.randint(1, 8)
            batch = flags[step - 1 : step - 1 + size]
            guard.record(torch.tensor(batch), first_step=step)
            expected.count(batch, step)
            step += len(batch)
            if rng.random() < 0.4 or step > len(flags):
                got = guard.read()
                assert (got.nonfinite_steps, got.first_nonfinite_step, got.longest_run) == expected.read()


class ReadByHand:
    """The guard's figures counted one step at a time, in Python."""

    def __init__(self) -> None:
        self.bad, self.first, self.in_a_row, self.longest = 0, None, 0, 0

    def count(self, flags: list[bool], first_step: int) -> None:
        for offset, flag in enumerate(flags):
            self.bad += flag
            if flag and self.first is None:
                self.first = first_step + offset
            self.in_a_row = self.in_a_row + 1 if flag else 0
            self.longest = max(self.longest, self.in_a_row)

    def read(self) -> tuple[int, int | None, int]:
        figures = (self.bad, self.first, self.longest)
        self.bad, self.first, self.longest = 0, None, self.in_a_row
        return figures
