"""``nima sweep``: Optuna trials built like ``nima train`` runs, pruning, resume, outputs, errors.

The sweeps train the tests' tiny model (tests/tiny.py) for a few dozen steps per trial, with a
seeded sampler so that which trials are pruned is the same on every run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny import model_dict

from nima.cli import main as nima
from nima.config import RunConfig
from nima.errors import ConfigError
from nima.tuning.space import Dimension, parse_space

optuna = pytest.importorskip("optuna")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Spans a learning rate too small to learn anything in 40 steps and one that is far too large:
# some trials are clearly worse than the first, and the pruner stops them at their first evaluation.
WIDE_LR = "training.learning_rate=log:1e-5..1e-1"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models train fastest on one thread (and do not fight other test workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_config(folder: Path, max_steps: int = 40, eval_every: int = 10, **training) -> Path:
    config = {
        "model": {**model_dict(), "vocab_size": 65},
        "training": {
            "max_steps": max_steps,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "warmup_steps": 0,
            "eval_every": eval_every,
            "eval_batches": 4,
            "save_every": 0,
            "log_every": 10,
            "precision": "fp32",
            "progress_bar": False,
            "output_dir": str(folder / "run"),
            **training,
        },
        "data": {"dataset": "tiny_shakespeare", "tokenizer": "char"},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def load(study_dir: Path, name: str = "tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


def states(study) -> list[str]:
    return [t.state.name for t in study.trials]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---------------------------------------------------------------------------------------- a sweep


def test_sweep_prunes_writes_best_config_and_plots(tmp_path: Path, capsys):
    config = write_config(tmp_path)
    study_dir = tmp_path / "study"
    argv = ["sweep", "--config", str(config), "--trials", "4", "--space", WIDE_LR]
    argv += ["--space", "training.warmup_steps=0..10", "--study_dir", str(study_dir), "--steps", "30"]
    argv += ["--sampler", "random", "--seed", "3", "--startup_trials", "1", "--prune_after", "0"]
    assert nima(argv) == 0
    out = capsys.readouterr().out

    # The study: 4 finished trials in the SQLite file, the first complete, at least one pruned early.
    assert (study_dir / "study.db").is_file()
    study = load(study_dir)
    assert len(study.trials) == 4, states(study)
    assert study.trials[0].state.name == "COMPLETE"
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, f"no trial was pruned: {states(study)}\n{out}"
    for trial in pruned:
        assert max(trial.intermediate_values) < 30, trial.intermediate_values  # stopped before the end
        assert "pruned" in trial.user_attrs["reason"] or "diverged" in trial.user_attrs["reason"]
    for trial in study.trials:
        if trial.state.name == "COMPLETE":
            assert sorted(trial.intermediate_values) == [10, 20, 30]  # one report per evaluation
    assert "pruned at step 10" in out and "best: trial" in out

    # Each trial trained as nima train does, in its own folder; checkpoints removed at its end.
    for trial in study.trials:
        folder = study_dir / f"trial_{trial.number}"
        assert (folder / "logs" / "metrics.jsonl").is_file()
        assert "training" in (folder / "train.log").read_text(encoding="utf-8")
        assert not (folder / "checkpoints").exists()

    # best_config.yaml: the complete config, the best values, the config's own length.
    best = study.best_trial
    best_path = study_dir / "best_config.yaml"
    best_config = RunConfig.from_yaml(best_path)
    assert best_config.training.learning_rate == pytest.approx(best.params["training.learning_rate"])
    assert best_config.training.warmup_steps == best.params["training.warmup_steps"]
    assert best_config.training.max_steps == 40  # trials trained 30 (--steps); the config says 40
    assert best_config.training.output_dir == str(tmp_path / "run")
    assert best_config.model.d_model == model_dict()["d_model"]
    assert f"val loss {best.value:.4f}" in best_path.read_text(encoding="utf-8")
    # ... and it trains.
    run_dir = tmp_path / "best_run"
    train = [
        "train",
        "--config",
        str(best_path),
        "--training.max_steps=2",
        f"--training.output_dir={run_dir}",
    ]
    assert nima(train) == 0
    assert (run_dir / "results.json").is_file()

    # The plots: real PNG files.
    for name in ("optimization_history", "param_importances", "intermediate_values"):
        png = study_dir / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC, name
        assert png.stat().st_size > 10_000, name


def test_interrupted_sweep_runs_only_the_missing_trials(tmp_path: Path, capsys):
    config = write_config(tmp_path, max_steps=10, eval_every=5)
    study_dir = tmp_path / "study"
    argv = ["sweep", "--config", str(config), "--space", "training.learning_rate=log:1e-3..1e-2"]
    argv += ["--study_dir", str(study_dir), "--pruner", "none", "--seed", "0"]
    assert nima([*argv, "--trials", "2"]) == 0
    assert len(load(study_dir).trials) == 2
    capsys.readouterr()

    assert nima([*argv, "--trials", "4"]) == 0
    out = capsys.readouterr().out
    assert "2 of 4 trials done, 2 to run" in out
    assert out.count("]: training.learning_rate=") == 2  # two trials started, not four
    study = load(study_dir)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert states(study) == ["COMPLETE"] * 4
    lrs = [t.params["training.learning_rate"] for t in study.trials]
    assert len(set(lrs)) == 4  # the resumed sampler did not draw the first trials' values again

    # Done: the same command runs nothing; another space for the same study is refused.
    assert nima([*argv, "--trials", "4"]) == 0
    assert "4 of 4 trials done" in capsys.readouterr().out
    assert len(load(study_dir).trials) == 4
    other = [a.replace("1e-2", "3e-2") for a in argv]
    assert nima([*other, "--trials", "4"]) == 2
    assert "searches another space" in one_error_line(capsys)


def test_python_api_and_failed_trials(tmp_path: Path, monkeypatch):
    """run_sweep from Python; a trial that does not fit in memory fails with its reason and the
    sweep goes on; a trial left running by a killed process is failed and not counted."""
    from nima.training import recipe
    from nima.tuning import run_sweep

    config = write_config(tmp_path, max_steps=10, eval_every=5)
    study_dir = tmp_path / "study"
    # A trial left RUNNING by a process of this machine that is gone.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    study_dir.mkdir()
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{study_dir / 'study.db'}")
    stale = study.ask()
    stale.set_user_attr("host", socket.gethostname())
    stale.set_user_attr("pid", gone.pid)

    real_build_run = recipe.build_run
    calls = []

    def build_run(config, **kwargs):
        calls.append(config.training.learning_rate)
        if len(calls) == 2:
            raise ConfigError("this run will not fit in memory: one training step needs about 99 GiB")
        return real_build_run(config, **kwargs)

    monkeypatch.setattr(recipe, "build_run", build_run)
    lines: list[str] = []
    result = run_sweep(
        config,
        trials=3,
        space={"training.learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}},
        study_dir=study_dir,
        pruner="none",
        seed=0,
        say=lines.append,
    )
    study = load(study_dir)
    assert states(study) == ["FAIL", "COMPLETE", "FAIL", "COMPLETE"], lines
    assert "reason" not in study.trials[0].user_attrs  # the stale one: not counted
    assert study.trials[2].user_attrs["reason"].startswith("out of memory: this run will not fit")
    assert any(line.startswith("trial 2: failed: out of memory") for line in lines)
    assert (result.trials, result.ran, result.complete, result.failed) == (3, 3, 2, 1)
    assert result.best_trial == study.best_trial.number
    assert result.best_config_path == study_dir / "best_config.yaml"
    assert set(result.plots) == {"optimization_history", "intermediate_values"}
    assert any("only one searched parameter" in note for note in result.notes)


def test_ctrl_c_stops_the_sweep_and_the_same_command_continues(tmp_path: Path, monkeypatch, capsys):
    """Ctrl-C during a trial: the Trainer stops at a step boundary, the trial is failed as
    interrupted (not counted), the sweep ends with SIGINT; the same call then runs the trials."""
    from nima.training import recipe
    from nima.training.callbacks import Callback

    class CtrlC(Callback):
        def on_step(self, trainer):
            if trainer.step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    real_build_run = recipe.build_run
    monkeypatch.setattr(
        recipe,
        "build_run",
        lambda config, callbacks=(), **kw: real_build_run(config, callbacks=[*callbacks, CtrlC()], **kw),
    )
    config = write_config(tmp_path, max_steps=10, eval_every=5)
    study_dir = tmp_path / "study"
    argv = ["sweep", "--config", str(config), "--trials", "2", "--study_dir", str(study_dir)]
    argv += ["--space", "training.learning_rate=log:1e-3..1e-2", "--no_plots"]
    assert nima(argv) == 128 + signal.SIGINT  # as nima train: the exit status says which signal
    (trial,) = load(study_dir).trials
    assert trial.state.name == "FAIL" and trial.user_attrs["interrupted"] is True
    assert "interrupted by SIGINT: run the same command again" in capsys.readouterr().out

    monkeypatch.setattr(recipe, "build_run", real_build_run)
    assert nima(argv) == 0
    assert "0 of 2 trials done, 2 to run" in capsys.readouterr().out
    assert states(load(study_dir)) == ["FAIL", "COMPLETE", "COMPLETE"]


def test_diverging_trials_are_pruned_with_their_reason(tmp_path: Path):
    from nima.tuning import run_sweep

    config = write_config(tmp_path, max_steps=10, eval_every=5, gradient_clip=None)
    lines: list[str] = []
    result = run_sweep(
        config,
        trials=2,
        space=["training.learning_rate=choice:1e6"],
        study_dir=tmp_path / "study",
        pruner="none",
        say=lines.append,
    )
    assert [t.state.name for t in result.study.trials] == ["PRUNED", "PRUNED"]  # and the sweep went on
    for trial in result.study.trials:
        assert trial.user_attrs["reason"].startswith(
            "diverged: training diverged: the loss or its gradients became nan or inf"
        )
    assert any(line.startswith("trial 1: pruned: training diverged") for line in lines), lines
    assert result.best_trial is None and result.best_config_path is None
    assert not (tmp_path / "study" / "best_config.yaml").exists()
    assert any(note.startswith("no trial completed, so there is no best config") for note in result.notes)
    assert result.plots == {}  # nothing completed, nothing evaluated: notes instead of plots
    assert "no optimization history plot: no trial completed" in result.notes


# ---------------------------------------------------------------------------------------- mistakes


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ("training.learnig_rate=log:1e-4..1e-2", "did you mean training.learning_rate?"),
        ("training.learning_rate", "expected KEY=LOW..HIGH"),
        ("training.learning_rate=lgo:1e-4..1e-2", "unknown prefix 'lgo:' (did you mean log?)"),
        ("training.learning_rate=log:1e-4-1e-2", "expected KEY=LOW..HIGH"),
        ("training.learning_rate=log:0..1e-2", "a log: range needs a low end above 0"),
        ("training.learning_rate=1e-2..1e-4", "the low end must be below the high end"),
        ("training.learning_rate=0.001", "expected KEY=LOW..HIGH"),
        ("model.d_model=choice:64,wide", "model.d_model must be an integer, got 'wide'"),
        ("model.d_model=float:32..64", "model.d_model is an integer"),
        ("model.arch=1..2", "model.arch is not a number"),
        ("trainig.learning_rate=1..2", "unknown section 'trainig' (did you mean training?)"),
        ("model.d_model=choice:", "expected choice:A,B,C"),
        ("training.min_lr=log:1e-4..1e-1", "training.min_lr=0.1 makes an invalid config"),
    ],
)
def test_bad_space_is_one_error_line(tmp_path: Path, capsys, space: str, expected: str):
    config = write_config(tmp_path)
    argv = ["sweep", "--config", str(config), "--trials", "2", "--study_dir", str(tmp_path / "s")]
    assert nima([*argv, "--space", space]) == 2
    line = one_error_line(capsys)
    assert expected in line and space.split("=")[0].split(":")[0] in line, line
    assert not (tmp_path / "s" / "study.db").exists()  # refused before anything ran


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--trials", "0"], "--trials must be a whole number >= 1"),
        (["--trials", "2", "--pruner", "medain"], "did you mean median?"),
        (["--trials", "2", "--pruner", "percentile:200"], "percentile P between 0 and 100"),
        (["--trials", "2", "--training.learnig_rate=1e-3"], "did you mean training.learning_rate?"),
        (["--trials", "2", "--steps", "0"], "--steps must be a whole number >= 1"),
    ],
)
def test_bad_options_are_one_error_line(tmp_path: Path, capsys, args: list[str], expected: str):
    config = write_config(tmp_path)
    assert nima(["sweep", "--config", str(config), "--study_dir", str(tmp_path / "s"), *args]) == 2
    assert expected in one_error_line(capsys)


def test_missing_optuna_is_one_error_line(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    assert nima(["sweep", "--config", str(write_config(tmp_path)), "--trials", "2"]) == 2
    assert one_error_line(capsys) == "error: nima sweep needs optuna: pip install 'nima[sweep]'"


# ---------------------------------------------------------------------------------------- the space


def test_space_spellings(tmp_path: Path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(
        "sweep:\n"
        "  training.learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}\n"
        "  training.warmup_steps: {low: 0, high: 200, step: 10}\n"
        "  model.d_model: [64, 128]\n"
        "  training.eval_steps: choice:5,10\n",  # an alias: the canonical key is searched
        encoding="utf-8",
    )
    space = parse_space([str(space_file), "model.n_layers=int:log:2..8", "training.min_lr=0..1e-4"])
    assert space == {
        "training.learning_rate": Dimension("training.learning_rate", "float", 1e-4, 3e-3, log=True),
        "training.warmup_steps": Dimension("training.warmup_steps", "int", 0, 200, step=10),
        "model.d_model": Dimension("model.d_model", "choice", choices=(64, 128)),
        "training.eval_every": Dimension("training.eval_every", "choice", choices=(5, 10)),
        "model.n_layers": Dimension("model.n_layers", "int", 2, 8, log=True),
        "training.min_lr": Dimension("training.min_lr", "float", 0.0, 1e-4),
    }
    assert space["training.learning_rate"].describe() == "log:0.0001..0.003"
    assert space["model.d_model"].describe() == "choice:64,128"
    assert parse_space({"training.lr_scheduler_type": "choice:cosine,linear"})[
        "training.lr_scheduler_type"
    ].choices == ("cosine", "linear")
    with pytest.raises(ConfigError, match="model.d_model is searched twice"):
        parse_space(["model.d_model=choice:64,128", "model.d_model=32..64"])
    with pytest.raises(ConfigError, match="unknown field 'hihg' \\(did you mean 'high'\\?\\)"):
        parse_space({"training.learning_rate": {"low": 1e-4, "hihg": 1e-3}})


def test_sweep_section_of_the_config_and_the_default_space(tmp_path: Path):
    """A sweep: section in the config file is the space; without any, the default space is the
    learning rate around the config's and the warmup (one trial of each is enough to see it)."""
    from nima.tuning import run_sweep

    config = write_config(tmp_path, max_steps=8, eval_every=4)
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    with_section = tmp_path / "with_sweep.yaml"
    with_section.write_text(
        yaml.safe_dump({**raw, "sweep": {"training.weight_decay": {"low": 0.0, "high": 0.2}}}),
        encoding="utf-8",
    )
    result = run_sweep(with_section, trials=1, study_dir=tmp_path / "a", plots=False, say=lambda _: None)
    assert list(result.best_params) == ["training.weight_decay"]
    best = yaml.safe_load((tmp_path / "a" / "best_config.yaml").read_text(encoding="utf-8"))
    assert list(best) == ["model", "training", "data"]  # no sweep: section, so nima train takes it

    lines: list[str] = []
    result = run_sweep(config, trials=1, study_dir=tmp_path / "b", plots=False, say=lines.append)
    assert (
        lines[0] == "space (default): training.learning_rate=log:0.0003..0.03, training.warmup_steps=int:0..2"
    )
    assert set(result.best_params) == {"training.learning_rate", "training.warmup_steps"}


def test_the_history_plot_draws_the_best_so_far_as_steps() -> None:
    pytest.importorskip("matplotlib")
    from optuna.visualization import matplotlib as vis

    from nima.tuning.conclusion import _figure_of, _label_history

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    for value in (3.0, 2.5, 2.7, 2.0):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value))
    figure = _figure_of(vis.plot_optimization_history(study))
    _label_history(figure)
    (best,) = [line for line in figure.axes[0].get_lines() if line.get_label() == "Best Value"]
    assert list(best.get_ydata()) == [3.0, 2.5, 2.5, 2.0]
    assert best.get_drawstyle() == "steps-post"  # flat until the trial that improves it
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()][-1] == "best so far"


def test_the_best_config_keeps_the_configs_own_evaluation_frequency(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path, max_steps=40, eval_every=0)  # trials alone would evaluate only at the end
    study_dir = tmp_path / "study"
    argv = ["sweep", "--config", str(config), "--trials", "1", "--steps", "8", "--space", WIDE_LR]
    assert nima([*argv, "--study_dir", str(study_dir), "--pruner", "none", "--seed", "0"]) == 0
    assert "trials evaluate every 2 steps" in capsys.readouterr().out
    assert sorted(load(study_dir).trials[0].intermediate_values) == [2, 4, 6, 8]
    best = yaml.safe_load((study_dir / "best_config.yaml").read_text(encoding="utf-8"))
    assert best["training"]["eval_every"] == 0 and best["training"]["max_steps"] == 40
