"""Signals: Ctrl-C's exit status at the command line, and a signal that arrives during an
evaluation or a save is honoured at the next safe point, after which the run resumes exactly.

(SIGTERM at the command line, and SIGKILL followed by --resume, are tested in
test_training_cli.py; benchmarks/kill_storm.py SIGKILLs a run hundreds of times.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import model_args, model_config
from training_helpers import start_until

from nima.checkpoint import load_checkpoint_file
from nima.data import DataCollator, TokenWindowDataset, create_dataloader
from nima.models import create_model
from nima.training import Trainer, TrainingConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = [*model_args(), "--training.precision=fp32", "--training.batch_size=4", "--training.warmup_steps=1"]
STEPS = 8


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_130(tmp_path: Path, session_data_dir: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "scripts/train.py", "--config", "configs/cpu_quick.yaml", "--resume",
               "--training.max_steps=400", "--training.log_every=1", "--training.eval_every=0",
               f"--training.output_dir={out}", *TINY]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NIMA_DATA_DIR": str(session_data_dir)}
    metrics = out / "logs" / "metrics.jsonl"
    job = start_until(command, env, lambda: metrics.is_file() and metrics.read_text().count("\n") >= 3)
    job.send_signal(signal.SIGINT)
    stdout, stderr = job.communicate(timeout=120)
    assert job.returncode == 130, stderr
    assert "stopped by SIGINT at step" in stdout
    assert "to continue: run the same command with --resume" in stdout
    assert "Traceback" not in stderr
    saved = sorted((out / "checkpoints").glob("step_*.pt"))
    assert len(saved) == 1
    stopped_at = load_checkpoint_file(saved[0])["step"]
    assert 3 <= stopped_at < 400

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming at step {stopped_at}" in again.stdout
    assert load_checkpoint_file(out / "checkpoints" / "step_400.pt")["step"] == 400


# ---------------------------------------------------------------------------------------- in process


class SignalDuring:
    """Sends ``signum`` to this process from inside hook ``hook`` at step ``step`` (once)."""

    def __init__(self, hook: str, step: int, signum: int) -> None:
        self.hook, self.step, self.signum = hook, step, signum
        self.sent_at: int | None = None

    def _send(self, trainer: Trainer) -> None:
        if self.sent_at is not None or trainer.step != self.step:
            return
        handler = signal.getsignal(self.signum)
        # Only the Trainer's handler may receive it (the default one would end the test process).
        assert type(getattr(handler, "__self__", None)).__name__ == "StopSignal", handler
        self.sent_at = trainer.step
        os.kill(os.getpid(), self.signum)

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.hook == "on_evaluate":
            self._send(trainer)

    def on_save(self, trainer: Trainer, path: Path) -> None:
        if self.hook == "on_save":
            self._send(trainer)


def make_trainer(prepared: Any, out: Path, callbacks: list[Any] = (), async_save: bool = False) -> Trainer:
    torch.manual_seed(0)
    model = create_model(model_config(prepared.tokenizer.vocab_size))
    collator = DataCollator(prepared.tokenizer)
    train = TokenWindowDataset.from_prepared(prepared, "train", 32, seed=0)
    val = TokenWindowDataset.from_prepared(prepared, "val", 32, seed=0)
    config = TrainingConfig(
        max_steps=STEPS, batch_size=4, learning_rate=3e-3, warmup_steps=1, eval_every=2, eval_batches=2,
        save_every=2, log_every=1, output_dir=str(out), progress_bar=False, precision="fp32",
        async_checkpoint=async_save,
    )  # fmt: skip
    return Trainer(
        model,
        config,
        create_dataloader(train, 4, collate_fn=collator, shuffle=True, seed=0),
        create_dataloader(val, 4, collate_fn=collator, shuffle=False),
        tokenizer=prepared.tokenizer,
        callbacks=list(callbacks),
    )


@pytest.fixture(scope="module")
def uninterrupted(prepared: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("uninterrupted")
    make_trainer(prepared, out).train()
    return load_checkpoint_file(out / "checkpoints" / f"step_{STEPS}.pt")


def tensors(state: Any, name: str = "") -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in tensors(value, f"{name}.{key}").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, value in enumerate(state) for k, v in tensors(value, f"{name}[{i}]").items()}
    return {name: state} if isinstance(state, torch.Tensor) else {}


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread")
@pytest.mark.parametrize(
    "hook, step, signum, async_save",
    [
        ("on_evaluate", 4, signal.SIGTERM, False),
        ("on_save", 2, signal.SIGTERM, False),
        ("on_save", 4, signal.SIGTERM, True),  # the write is in flight on the background thread
        ("on_save", 6, signal.SIGINT, False),
    ],
    ids=["SIGTERM-evaluating", "SIGTERM-saving", "SIGTERM-saving-async", "SIGINT-saving"],
)
def test_a_signal_during_evaluation_or_a_save_stops_at_the_next_step_boundary(
    hook, step, signum, async_save, prepared, uninterrupted, tmp_path
) -> None:
    before = signal.getsignal(signum)
    sender = SignalDuring(hook, step, signum)
    trainer = make_trainer(prepared, tmp_path, [sender], async_save=async_save)
    results = trainer.train()
    name = signal.Signals(signum).name
    assert sender.sent_at == step
    assert results.stop_signal == name and trainer.stop_signal == signum
    assert results.steps == step == trainer.step  # this step's evaluation and save ended; no new step began
    assert results.stop_reason == f"stopped by {name} at step {step}; resume from the checkpoint"
    assert signal.getsignal(signum) is before  # the Trainer's handler is gone again
    checkpoints = tmp_path / "checkpoints"
    saved = sorted(p.name for p in checkpoints.glob("step_*.pt"))
    assert saved == [f"step_{s}.pt" for s in range(2, step + 1, 2)]
    assert not list(checkpoints.glob(".*.tmp"))
    assert load_checkpoint_file(checkpoints / f"step_{step}.pt")["step"] == step

    resumed = make_trainer(prepared, tmp_path, async_save=async_save)
    resumed.load_checkpoint(checkpoints / f"step_{step}.pt")
    assert resumed.train().stop_signal is None
    final = load_checkpoint_file(checkpoints / f"step_{STEPS}.pt")
    for part in ("model", "optimizer"):
        got, want = tensors(final[part]), tensors(uninterrupted[part])
        assert got.keys() == want.keys()
        different = [k for k in want if not torch.equal(got[k], want[k])]
        assert not different, f"{part} differs from the uninterrupted run: {different[:5]}"


# ---------------------------------------------------------------------------------------- SIGKILL


@pytest.mark.slow
def test_a_10_kill_storm_loses_nothing(tmp_path: Path, session_data_dir: Path) -> None:
    # benchmarks/kill_storm.py at its smallest: 5 SIGKILLs of a run that saves every step, with
    # synchronous and with background saves (the 200-kill figures are in docs/reliability.md).
    result = subprocess.run(
        [sys.executable, "benchmarks/kill_storm.py", "--kills", "10", "--seed", "1",
         "--data_dir", str(session_data_dir), "--work", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "kill storm: seed 1" in result.stdout
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["kills"] == 10, figures
    for failure in ("corrupt", "lost", "failed_resumes", "temporary_taken", "failures"):
        assert figures[failure] == 0, figures
    assert figures["bit_identical"] is True
    # Every start killed after its first save said where it resumed, and so did each final run.
    assert figures["resumes_verified"] >= figures["kills"] - figures["kills_during_startup"] + 2
    assert figures["files_checked"] >= 10
    assert [mode["final_step"] == mode["steps"] for mode in figures["modes"]] == [True, True]
