"""A new run in a folder that an earlier run left: the earlier run's files are set aside whole
(nothing overwritten, no mixed logs); resuming goes on in place."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tiny import model_args
from training_helpers import small_loader, tiny_model, training_config

from nima.checkpoint import load_model_from_checkpoint
from nima.training import Trainer
from nima.training.cli import main as train_main


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.pt"))}


def _train(prepared, tmp_path: Path, steps: int, **model: int) -> Trainer:
    config = training_config(tmp_path, "fp32", max_steps=steps, save_every=2, log_every=1)
    trainer = Trainer(tiny_model(prepared, **model), config, small_loader(prepared))
    trainer.train()
    return trainer


def test_a_new_python_run_sets_the_earlier_run_aside_whole(prepared, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    _train(prepared, tmp_path, steps=4)
    earlier = _digests(out / "checkpoints")
    assert set(earlier) == {"step_2.pt", "step_4.pt"}

    _train(prepared, tmp_path, steps=2, n_layers=1)  # another model, in the same folder
    note = next(line for line in capsys.readouterr().out.splitlines() if "held an earlier run" in line)
    (moved,) = (out / "earlier_runs").iterdir()
    assert str(moved) in note and f"--checkpoint {moved / 'checkpoints' / 'step_4.pt'}" in note
    assert _digests(moved / "checkpoints") == earlier  # every byte of it kept
    assert set(_digests(out / "checkpoints")) == {"step_2.pt"}
    steps = [json.loads(line)["step"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # the new run's log alone
    assert len((moved / "logs" / "metrics.jsonl").read_text().splitlines()) == 4
    assert load_model_from_checkpoint(moved / "checkpoints" / "step_4.pt")[0].config.n_layers != 1


def test_resuming_goes_on_in_place(prepared, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _train(prepared, tmp_path, steps=2)
    config = training_config(tmp_path, "fp32", max_steps=4, save_every=2, log_every=1)
    trainer = Trainer(tiny_model(prepared), config, small_loader(prepared))
    trainer.load_checkpoint(out / "checkpoints" / "step_2.pt")
    trainer.train()
    assert not (out / "earlier_runs").exists()
    assert set(_digests(out / "checkpoints")) == {"step_2.pt", "step_4.pt"}


def test_the_cli_sets_aside_before_writing_its_config_and_can_start_from_the_earlier_weights(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    common = ["--quick_test", "--training.precision=fp32", "--training.batch_size=4"]
    common += ["--training.eval_batches=2", "--training.output_dir=runs/a", "--training.eval_every=2"]
    assert train_main([*common, *model_args(), "--training.max_steps=4"]) == 0
    best = tmp_path / "runs" / "a" / "checkpoints" / "best_model.pt"
    # A new run from the earlier run's own best weights, written to the same folder.
    assert train_main([*common, "--training.max_steps=2", "--init_from", str(best)]) == 0
    out = capsys.readouterr().out
    assert "held an earlier run" in out
    (moved,) = (tmp_path / "runs" / "a" / "earlier_runs").iterdir()
    assert (moved / "checkpoints" / "best_model.pt").is_file() and (moved / "config.yaml").is_file()
    assert "max_steps: 2" in (tmp_path / "runs" / "a" / "config.yaml").read_text()  # the new run's own
    assert "max_steps: 4" in (moved / "config.yaml").read_text()
