"""The callback contract: hooks get a RunView of the run (never the Trainer), one event per moment,
and a callback asks for a stop or a save through the view. And the one assembler's promises about
seeding: a model handed in keeps its weights; the run's streams follow the seed."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from training_helpers import small_loader, tiny_model, training_config

from nima.errors import ConfigError
from nima.training import Callback, RunView, Trainer

config = partial(training_config, precision="fp32")


class Recorder(Callback):
    """Every hook call, in order, with what the view said at that moment."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.views: set[int] = set()

    def _note(self, hook: str, run: RunView) -> None:
        assert isinstance(run, RunView), type(run)
        self.views.add(id(run))
        self.calls.append((hook, run.step))

    def on_train_begin(self, run):
        self._note("begin", run)

    def on_step(self, run):
        self._note("step", run)

    def on_log(self, run, metrics):
        self._note("log", run)
        assert run.metrics is metrics  # the latest logged record

    def on_evaluate(self, run, metrics):
        self._note("evaluate", run)

    def on_save(self, run, path):
        self._note("save", run)

    def on_train_end(self, run, results):
        self._note("end", run)


def test_every_hook_gets_one_view_and_each_moment_fires_once(prepared, tmp_path: Path) -> None:
    recorder = Recorder()
    cfg = config(tmp_path, max_steps=4, log_every=2, eval_every=4)
    trainer = Trainer(tiny_model(prepared), cfg, small_loader(prepared), small_loader(prepared, split="val"),
                      callbacks=[recorder])  # fmt: skip
    trainer.train()
    assert recorder.views == {id(trainer.view)}
    assert recorder.calls[0] == ("begin", 0) and recorder.calls[-1] == ("end", 4)
    logs = [step for hook, step in recorder.calls if hook == "log"]
    assert logs == [2, 4]  # one record per logging step (step 4's evaluation is in its record)
    assert [step for hook, step in recorder.calls if hook == "step"] == [1, 2, 3, 4]
    assert ("evaluate", 4) in recorder.calls and ("save", 4) in recorder.calls


def test_a_callback_stops_the_run_and_says_why(prepared, tmp_path: Path) -> None:
    class StopAtTwo(Callback):
        def on_step(self, run):
            if run.step == 2:
                run.request_stop("enough at two")

    results = Trainer(
        tiny_model(prepared), config(tmp_path), small_loader(prepared), callbacks=[StopAtTwo()]
    ).train()
    assert results.steps == 2 and results.stopped_early and results.stop_reason == "enough at two"


def test_a_callback_asks_for_a_save(prepared, tmp_path: Path) -> None:
    class SaveAtThree(Callback):
        def on_step(self, run):
            if run.step == 3:
                run.request_save()

    trainer = Trainer(tiny_model(prepared), config(tmp_path, max_steps=6), small_loader(prepared),
                      callbacks=[SaveAtThree()])  # fmt: skip
    trainer.train()
    saved = sorted(p.name for p in trainer.checkpoint_dir.glob("step_*.pt"))
    assert saved == ["step_3.pt", "step_6.pt"]  # the asked-for save, and the final one


def test_the_old_on_step_end_hook_is_refused_before_any_work(prepared, tmp_path: Path) -> None:
    class Old:
        def on_step_end(self, trainer, metrics): ...

    with pytest.raises(ConfigError, match=r"Old\.on_step_end: this hook is now on_log\(run, metrics\)"):
        Trainer(tiny_model(prepared), config(tmp_path), small_loader(prepared), callbacks=[Old()])
    assert not (tmp_path / "out").exists()  # refused before the run folder was claimed


def test_a_model_handed_in_keeps_its_weights(prepared, tmp_path: Path) -> None:
    model = tiny_model(prepared, seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, config(tmp_path, seed=123), small_loader(prepared))
    after = trainer.raw_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_run_streams_follow_the_training_seed(prepared, tmp_path: Path) -> None:
    """Two runs that differ only in training.seed (dropout on) train differently; the same seed
    trains the same, whatever random numbers were drawn before the Trainer was built."""

    def losses(seed: int, noise: int) -> list[float]:
        model = tiny_model(prepared, seed=0, dropout=0.2)
        torch.rand(noise)  # draws before assembly must not matter
        cfg = config(tmp_path / f"{seed}-{noise}", seed=seed, max_steps=3)
        trainer = Trainer(model, cfg, small_loader(prepared))
        trainer.train()
        return [r["loss"] for r in trainer.parts.metrics.history if "loss" in r]

    assert losses(1, 0) == losses(1, 5)
    assert losses(1, 0) != losses(2, 0)
