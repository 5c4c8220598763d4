"""Pictures and reports of runs: metrics.jsonl read back across resumes, nima plot, the loss.png and
report.md a run leaves behind, nima report rebuilding it, and config.yaml's reproduce commands."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from tiny import model_args, model_config
from training_helpers import split_loader

from nima.cli import main as nima
from nima.config import RunConfig
from nima.errors import ConfigError
from nima.models import create_model
from nima.reporting import load_run, plot_runs, read_metrics, write_report
from nima.reporting.runs import rerun_commands, series
from nima.training import Callback, RunReport, Trainer, TrainingConfig
from nima.training.cli import main as train_main


def train_tiny(prepared, out: Path, callbacks=(), **overrides) -> Trainer:
    torch.manual_seed(0)
    settings = {
        "precision": "fp32",
        "batch_size": 4,
        "max_steps": 8,
        "log_every": 2,
        "eval_every": 4,
        "eval_batches": 2,
        "save_every": 0,
        "progress_bar": False,
        "output_dir": str(out),
        **overrides,
    }
    trainer = Trainer(
        create_model(model_config(prepared.tokenizer.vocab_size)),
        TrainingConfig(**settings),
        split_loader(prepared),
        split_loader(prepared, "val", 2000),
        tokenizer=prepared.tokenizer,
        callbacks=list(callbacks),
    )
    trainer.train()
    return trainer


def write_metrics(folder: Path, records: list[dict]) -> Path:
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    path = folder / "logs" / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def png_size(path: Path) -> tuple[int, int]:
    image = matplotlib.image.imread(path)
    return image.shape[1], image.shape[0]


# ---------------------------------------------------------------------------------- reading runs


def test_read_metrics_replaces_steps_a_resume_went_back_over(tmp_path: Path) -> None:
    write_metrics(
        tmp_path,
        [
            {"step": 10, "loss": 3.0, "tokens": 100, "time_s": 1.0},
            {"step": 20, "loss": 2.5, "tokens": 200, "time_s": 2.0},
            {"step": 30, "loss": 2.4, "tokens": 300, "time_s": 3.0},  # after the step-20 checkpoint
            {"step": 30, "val_loss": 2.45},
        ],
    )
    path = tmp_path / "logs" / "metrics.jsonl"
    with path.open("a") as f:  # resumed from step 20: steps 30.. again, time_s from 0 again
        f.write(json.dumps({"step": 30, "loss": 2.3, "tokens": 300, "time_s": 0.5}) + "\n")
        f.write(json.dumps({"step": 40, "loss": 2.2, "tokens": 400, "time_s": 1.5}) + "\n")
        f.write(json.dumps({"step": 40, "val_loss": 2.25}) + "\n")
        f.write('{"step": 50, "loss": 2.1, "tok')  # a killed writer's half line
    records = read_metrics(path)
    assert [(r["step"], r.get("loss")) for r in records] == [
        (10, 3.0),
        (20, 2.5),
        (30, 2.3),
        (40, 2.2),
        (40, None),
    ]
    assert [r["time_s"] for r in records] == [1.0, 2.0, 2.5, 3.5, 3.5]  # continued across the resume
    assert series(records, "val_loss", "tokens") == ([400.0], [2.25])  # filled in from its step


def test_a_second_train_call_continues_the_time_axis(tmp_path: Path) -> None:
    write_metrics(
        tmp_path,
        [
            {"step": 2, "loss": 3.0, "time_s": 1.0},
            {"step": 4, "loss": 2.9, "time_s": 2.0},
            {"step": 6, "loss": 2.8, "time_s": 0.7},  # train() again, from step 4
        ],
    )
    assert series(read_metrics(tmp_path / "logs" / "metrics.jsonl"), "loss", "time_s")[0] == [1.0, 2.0, 2.7]


def test_rerun_commands_drop_resume_and_checkpoint() -> None:
    commands = rerun_commands(
        "nima train --config c.yaml --checkpoint out/checkpoints/step_4.pt --training.max_steps=9 --resume",
        "out/config.yaml",
    )
    assert commands == {
        "again": "nima train --config c.yaml --training.max_steps=9",
        "from_config": "nima train --config out/config.yaml",
        "resume": "nima train --config out/config.yaml --resume",
    }
    assert rerun_commands(None, None) == {}


def test_not_a_run_folder_is_one_line(tmp_path: Path, capsys) -> None:
    assert nima(["plot", str(tmp_path / "missing")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert nima(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a run folder" in err and err.count("\n") == 1
    write_metrics(tmp_path, [])
    assert nima(["plot", str(tmp_path)]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    assert nima(["plot", str(tmp_path), "--x", "epochs"]) == 2
    assert "invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- nima plot


def test_plot_several_runs_against_steps_tokens_and_time(tmp_path: Path, capsys) -> None:
    for name, scale in (("run_a", 1.0), ("run_b", 0.9)):
        write_metrics(
            tmp_path / name,
            [
                {"step": s, "loss": scale * 4 / s**0.3, "lr": 1e-3, "tokens_per_s": 5000.0, "grad_norm": 1.0}
                | {"tokens": 512 * s, "time_s": 0.1 * s}
                | ({"val_loss": scale * 4.2 / s**0.3} if s % 20 == 0 else {})
                for s in range(10, 101, 10)
            ],
        )
    runs = [str(tmp_path / "run_a"), str(tmp_path / "run_b")]
    for x in ("step", "tokens", "time"):
        out = tmp_path / f"runs_{x}.png"
        assert nima(["plot", *runs, "--x", x, "--output", str(out)]) == 0
        assert f"wrote {out}" in capsys.readouterr().out
        assert png_size(out) == (1200, 800)
    assert nima(["plot", runs[0]]) == 0  # one run: next to its metrics
    assert (tmp_path / "run_a" / "loss.png").is_file()
    # a run from before tokens were logged is named in the legend, not silently left out
    write_metrics(tmp_path / "old", [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0}])
    plot_runs([tmp_path / "run_a", tmp_path / "old"], tmp_path / "mixed.png", x="tokens")
    assert (tmp_path / "mixed.png").is_file()
    with pytest.raises(ConfigError, match="--x must be one of step, tokens, time"):
        plot_runs([tmp_path / "run_a"], tmp_path / "x.png", x="epochs")


# ---------------------------------------------------------------------------------- what a run leaves


def test_a_run_leaves_loss_png_and_report_md(prepared, tmp_path: Path) -> None:
    out = tmp_path / "out"
    trainer = train_tiny(prepared, out)
    assert png_size(out / "loss.png") == (1200, 800)
    report = (out / "report.md").read_text()
    for heading in ("## What was trained", "## How well", "## How fast", "## Where", "## Loss", "## Sample"):
        assert heading in report
    assert "![loss](loss.png)" in report
    assert "| processes | 1 |" in report and "| torch | " + torch.__version__ in report
    assert "fp32 (" in report  # the precision and why
    assert f"{trainer.validator.best:.4f}" in report
    assert "bits per byte" in report  # char tokens of ASCII text: one byte each
    bpb = trainer.validator.best / np.log(2)
    assert f"≈{bpb:.3f} bits per byte" in report
    assert "8 optimizer steps, 1,024 training tokens" in report
    assert "trained from Python (no config.yaml)" in report and "trainer.load_checkpoint(" in report
    info = json.loads((out / "logs" / "run_info.json").read_text())
    assert info["sample"] and info["sample"].strip()[:20] in report
    assert info["parameters"] == sum(p.numel() for p in trainer.raw_model.parameters())
    # nima report rebuilds the same page from the files
    (out / "report.md").unlink()
    assert nima(["report", str(out)]) == 0
    assert _without_date((out / "report.md").read_text()) == _without_date(report)


def _without_date(text: str) -> str:
    return re.sub(r"written \d{4}-\d\d-\d\d \d\d:\d\d UTC", "written DATE", text)


def test_the_plot_is_redrawn_at_evaluations_but_costs_little(prepared, tmp_path: Path, monkeypatch) -> None:
    from nima.reporting import plot as plot_module

    drawn: list[int] = []
    real = plot_module.plot_runs

    def counting(runs, output, **kw):
        drawn.append(len(read_metrics(Path(runs[0]) / "logs" / "metrics.jsonl")))
        return real(runs, output, **kw)

    monkeypatch.setattr(plot_module, "plot_runs", counting)
    report = RunReport()
    report.budget = float("inf")  # draw at every evaluation
    trainer = train_tiny(
        prepared, tmp_path / "every", callbacks=[report], max_steps=8, eval_every=2, log_every=2
    )
    assert drawn == [1, 2, 3, 4]  # at steps 2, 4, 6, 8, each with that evaluation's record in the file
    assert trainer.overhead_seconds > 0
    drawn.clear()
    train_tiny(prepared, tmp_path / "throttled", max_steps=8, eval_every=2, log_every=2)
    assert drawn == [4]  # a run of a second: within 1% of its time no drawing fits but the last


def test_the_final_evaluation_is_logged_with_the_figures_of_any_other(prepared, tmp_path: Path) -> None:
    out = tmp_path / "out"
    train_tiny(prepared, out, max_steps=6, eval_every=4)  # evaluations at step 4 and, at the end, 6
    evaluations = [r for r in read_metrics(out / "logs" / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [4, 6]
    for record in evaluations:
        assert record["val_perplexity"] == pytest.approx(np.exp(record["val_loss"]))
        assert record["val_tokens"] > 0


def test_the_drawing_budget_counts_training_time_not_time_spent_elsewhere(monkeypatch) -> None:
    from types import SimpleNamespace

    report = RunReport(plot=True, report=False)
    drawn: list[float] = []
    monkeypatch.setattr(report, "_draw", lambda run: drawn.append(run.train_seconds))
    for train_s in (10.0, 100.0):  # 1% of it: 0.1 s, then 1 s, for a first drawing taken as 0.5 s
        run = SimpleNamespace(is_main=True, train_seconds=train_s)  # a RunView's share
        report.on_log(run, {"val_loss": 2.0})
    assert drawn == [100.0]


def test_no_report_or_plot_when_asked(prepared, tmp_path: Path) -> None:
    out = tmp_path / "out"
    train_tiny(prepared, out, callbacks=[RunReport(plot=False, report=False)], max_steps=2, eval_every=0)
    assert not (out / "loss.png").exists() and not (out / "report.md").exists()


class SigtermAt(Callback):
    """Sends SIGTERM to this process at ``step``: the run saves and stops there, without the
    final evaluation (as when a scheduler preempts it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, trainer) -> None:
        if trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def loss_section_line(out: Path) -> str:
    report = (out / "report.md").read_text()
    return next(line for line in report.splitlines() if line.startswith(("No loss.png", "![loss]")))


def test_the_report_says_why_there_is_no_loss_png(prepared, tmp_path: Path, monkeypatch) -> None:
    from nima.reporting import report as report_module

    # Stopped at step 7 of a run that logs every 10 steps: nothing to draw, matplotlib or not.
    early = tmp_path / "early"
    train_tiny(prepared, early, callbacks=[SigtermAt(7)], max_steps=20, log_every=10, eval_every=0)
    assert loss_section_line(early) == (
        "No loss.png: no metrics were logged yet: the run stopped at step 7, before its first "
        "logging step (training.log_every: 10)."
    )
    # Logged, but not drawn: with matplotlib, how to draw it; without, what to install first.
    undrawn = tmp_path / "undrawn"
    train_tiny(prepared, undrawn, callbacks=[RunReport(plot=False)], max_steps=2, eval_every=0)
    assert loss_section_line(undrawn) == f"No loss.png: `nima plot {undrawn}` draws it."
    monkeypatch.setattr(report_module, "plots_available", lambda: False)
    write_report(undrawn)
    assert loss_section_line(undrawn).startswith("No loss.png: drawing plots needs matplotlib: pip install")


# ---------------------------------------------------------------------------------- nima train end to end


@pytest.mark.slow
def test_nima_train_writes_config_yaml_and_a_report_with_its_commands(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [
        "--quick_test",
        *model_args(),
        "--training.precision=fp32",
        "--training.batch_size=4",
        "--training.max_steps=6",
        "--training.eval_every=3",
        "--training.log_every=2",
        "--training.eval_batches=2",
        "--training.output_dir=experiments/qt",
        "--training.report_to=tensorboard",
    ]
    assert train_main(args) == 0
    out = tmp_path / "experiments" / "qt"
    config_text = (out / "config.yaml").read_text()
    command = "nima train " + " ".join(args)
    assert f"# command: {command}" in config_text
    saved = RunConfig.from_yaml(out / "config.yaml")  # every value resolved, and valid
    assert saved.model.vocab_size == 65 and saved.training.max_steps == 6
    assert saved.training.report_to == ["tensorboard"]
    report = (out / "report.md").read_text()
    assert command in report
    assert "nima train --config experiments/qt/config.yaml --resume" in report
    assert "tiny_shakespeare, char tokenizer" in report
    capsys.readouterr()
    # resuming with the report's command continues the run (here: nothing left to do but say so)
    again = RunConfig.from_yaml(out / "config.yaml", overrides=["--training.max_steps=8"])
    assert again.training.output_dir == "experiments/qt"
    assert train_main(["--config", "experiments/qt/config.yaml", "--resume", "--training.max_steps=8"]) == 0
    records = read_metrics(out / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [2, 3, 4, 6, 8]
    assert records[-1]["tokens"] == 8 * 4 * 32
    run = load_run(out)
    assert run.command.endswith("--resume --training.max_steps=8")
    assert run.results["steps"] == 8 and run.checkpoint["step"] == 8
    write_report(out)
    assert (
        "nima train --config experiments/qt/config.yaml --training.max_steps=8"
        in (out / "report.md").read_text()
    )
