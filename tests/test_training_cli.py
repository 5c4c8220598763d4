"""`scripts/train.py` / `nima train` end to end: tiny overrides, config errors, resume, fallback corpus."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import model_args
from training_helpers import start_until

from nima.errors import ConfigError
from nima.training import Callback, cli, recipe, run_data

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    *model_args(),
    "--training.precision=fp32",  # the same run on any CPU (bf16: test_training_bf16.py)
    "--training.batch_size=4",
    "--training.eval_batches=2",
    "--training.warmup_steps=1",
]


def train_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "scripts/train.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_train_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = train_script(
        "--config",
        "configs/cpu_quick.yaml",
        "--training.max_steps=5",
        f"--training.output_dir={out}",
        "--training.eval_every",
        "5",
        *TINY,
    )
    assert first.returncode == 0, first.stderr
    assert "precision: fp32" in first.stdout or "precision: bf16" in first.stdout
    assert (out / "checkpoints" / "step_5.pt").is_file()
    lines = [json.loads(x) for x in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 5 and "val_loss" in lines[-1]

    second = train_script(
        "--config",
        "configs/cpu_quick.yaml",
        "--training.max_steps=8",
        f"--training.output_dir={out}",
        "--checkpoint",
        str(out / "checkpoints" / "step_5.pt"),
        *TINY,
    )
    assert second.returncode == 0, second.stderr
    assert "resuming at step 5" in second.stdout
    ckpt = torch.load(out / "checkpoints" / "step_8.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 8


@pytest.mark.slow
def test_sigterm_saves_and_resume_continues(tmp_path: Path) -> None:
    # What a scheduler does before preempting a job: SIGTERM, then the same command again.
    out = tmp_path / "run"
    command = [sys.executable, "scripts/train.py", "--config", "configs/cpu_quick.yaml", "--resume",
               "--training.max_steps=400", "--training.log_every=1", "--training.eval_every=0",
               f"--training.output_dir={out}", *TINY]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    metrics = out / "logs" / "metrics.jsonl"
    job = start_until(command, env, lambda: metrics.is_file() and metrics.read_text().count("\n") >= 3)
    job.send_signal(signal.SIGTERM)
    stdout, stderr = job.communicate(timeout=120)
    assert job.returncode == 128 + signal.SIGTERM, stderr
    assert "starting afresh" in stdout and "stopped by SIGTERM at step" in stdout
    saved = sorted((out / "checkpoints").glob("step_*.pt"))
    assert len(saved) == 1
    stopped_at = torch.load(saved[0], map_location="cpu", weights_only=True)["step"]
    assert 3 <= stopped_at < 400

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming at step {stopped_at}" in again.stdout
    assert (
        torch.load(out / "checkpoints" / "step_400.pt", map_location="cpu", weights_only=True)["step"] == 400
    )


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    # SIGKILL (out of memory, a node lost): no handler runs. The same command resumes from the last
    # periodic checkpoint and removes what a write cut short left behind.
    out = tmp_path / "run"
    command = [sys.executable, "scripts/train.py", "--config", "configs/cpu_quick.yaml", "--resume",
               "--training.max_steps=400", "--training.save_every=4", "--training.eval_every=0",
               f"--training.output_dir={out}", *TINY]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = start_until(command, env, (out / "checkpoints" / "step_8.pt").is_file)
    job.kill()
    job.communicate(timeout=60)
    assert job.returncode == -signal.SIGKILL
    last = max(torch.load(p, map_location="cpu", weights_only=True)["step"]
               for p in (out / "checkpoints").glob("step_*.pt"))  # fmt: skip
    assert 8 <= last < 400
    # What a kill during a save leaves: the temporary file, named after its (now dead) writer.
    partial = out / "checkpoints" / f".step_{last + 4}.pt.{socket.gethostname()}-{job.pid}.abcd1234.tmp"
    partial.write_bytes(b"half a checkpoint")

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming at step {last}" in again.stdout
    assert f"removed {partial.name}" in again.stdout and not partial.exists()
    final = torch.load(out / "checkpoints" / "step_400.pt", map_location="cpu", weights_only=True)
    assert final["step"] == 400


class SigtermAt(Callback):
    """Sends SIGTERM to this process once the run reaches ``step`` (the Trainer's handler takes
    it: the run saves and stops, as when a scheduler preempts a job)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, trainer) -> None:
        if trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """``nima train argv`` in this process: its exit code and what it printed."""
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr().out


@pytest.fixture
def stopped_checkpoint_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[list[str], str, Path]:
    """The guide's case: a tiny fp32 run of 3 steps, then ``--checkpoint step_3.pt`` with
    ``precision: auto`` and 8 steps, stopped by SIGTERM at step 5. Returns the second command's
    argv, what it printed, and the run folder."""
    out = tmp_path / "run"
    common = ["--config", str(ROOT / "configs" / "cpu_quick.yaml"), *TINY, "--training.eval_every=0",
              "--training.log_every=1", f"--training.output_dir={out}"]  # fmt: skip
    assert run_cli(capsys, [*common, "--training.max_steps=3"])[0] == 0
    argv = [*common, "--training.max_steps=8", "--training.precision=auto",
            "--checkpoint", str(out / "checkpoints" / "step_3.pt")]  # fmt: skip
    with monkeypatch.context() as patched:
        real = recipe.build_run
        patched.setattr(cli, "build_run", lambda run, **kw: real(run, callbacks=[SigtermAt(5)], **kw))
        code, stdout = run_cli(capsys, argv)
    assert code == 128 + signal.SIGTERM, stdout
    return argv, stdout, out


def test_the_continue_hint_after_a_checkpoint_start_works_when_followed(
    stopped_checkpoint_start: tuple[list[str], str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv, stdout, out = stopped_checkpoint_start
    step_3, step_5 = out / "checkpoints" / "step_3.pt", out / "checkpoints" / "step_5.pt"
    assert (
        f"to continue: run the same command with --resume in place of --checkpoint {step_3} "
        f"(--resume takes the newest checkpoint, {step_5})"
    ) in stdout.splitlines()
    # Followed literally: --resume where --checkpoint PATH was (the two together are refused).
    at = argv.index("--checkpoint")
    code, again = run_cli(capsys, [*argv[:at], "--resume", *argv[at + 2 :]])
    assert code == 0, again
    assert "resuming at step 5" in again
    assert torch.load(out / "checkpoints" / "step_8.pt", map_location="cpu", weights_only=True)["step"] == 8


def test_a_resumed_run_prints_one_precision_line_kept_from_the_checkpoint(
    stopped_checkpoint_start: tuple[list[str], str, Path],
) -> None:
    stdout = stopped_checkpoint_start[1]
    said = [line for line in stdout.splitlines() if "precision:" in line]
    assert len(said) == 1, said
    assert "precision: fp32 (kept from the checkpoint; training.precision: auto keeps" in said[0]


def test_the_done_line_of_a_resumed_run_counts_this_sessions_steps(
    stopped_checkpoint_start: tuple[list[str], str, Path],
) -> None:
    stdout = stopped_checkpoint_start[1]
    done = [line for line in stdout.splitlines() if line.startswith("done:")]
    # 2 steps of 4 windows of 32 tokens this session; the run as a whole is at step 5
    assert len(done) == 1 and done[0].startswith("done: step 5 (2 steps this session), 256 tokens in "), done
    assert cli.steps_done(8, 0) == "8 steps" and cli.steps_done(6, 5) == "step 6 (1 step this session)"


@pytest.mark.parametrize(
    "rank, local_rank, turn",
    [(0, 0, 0), (1, 1, 2), (4, 0, 1), (5, 1, 2)],  # 4 processes per node: rank 4 opens node 2
)
def test_data_is_prepared_once_per_node_rank_0_first(
    monkeypatch: pytest.MonkeyPatch, rank: int, local_rank: int, turn: int
) -> None:
    from nima.distributed import DistributedContext

    events: list[str] = []
    monkeypatch.setattr(run_data, "prepare_data", lambda *a, **k: events.append("prepare") or "prepared")
    monkeypatch.setattr(run_data, "barrier", lambda: events.append("barrier"))
    ctx = DistributedContext(rank=rank, local_rank=local_rank, world_size=8)
    assert run_data.prepare_data_once_per_node(None, ctx, allow_fallback=False) == "prepared"
    expected = ["barrier", "barrier", "barrier"]
    expected.insert(turn, "prepare")  # every process prepares once, in its turn between the barriers
    assert events == expected


def test_newest_checkpoint_is_the_latest_written(tmp_path: Path) -> None:
    assert cli.newest_checkpoint(tmp_path) is None
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for i, name in enumerate(["step_10.pt", "best_model.pt", "epoch_1.pt", "step_9.pt"]):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, ns=(i * 10**9, i * 10**9))
    # step_9.pt was written last (a run restarted from an earlier checkpoint); best_model never counts
    assert cli.newest_checkpoint(tmp_path) == folder / "step_9.pt"


def test_resume_and_checkpoint_together_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    from nima.cli import main

    assert main(["train", "--quick_test", "--resume", "--checkpoint", "x.pt"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: give either --checkpoint PATH or --resume (which finds the newest checkpoint)"
    )


@pytest.mark.slow
def test_base_config_vocab_is_corrected_once(tmp_path: Path) -> None:
    result = train_script(
        "--config",
        "configs/base_model.yaml",
        "--training.max_steps=2",
        f"--training.output_dir={tmp_path}",
        "--training.num_epochs",
        "1",
        *TINY,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if "vocab_size" in line]
    assert warnings == [
        "warning: model.vocab_size=10000 changed to 65 (the char vocabulary comes from the tokenizer)"
    ]
    ckpt = torch.load(tmp_path / "checkpoints" / "step_2.pt", map_location="cpu", weights_only=True)
    assert ckpt["model_config"]["vocab_size"] == 65


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--config", "configs/cpu_quick.yaml", "--training.learnig_rate=1"],
            "error: configs/cpu_quick.yaml: unknown key training.learnig_rate "
            "(did you mean training.learning_rate?)",
        ),
        (
            ["--config", "configs/cpu_quick.yaml", "--training.gradient_accumulation_steps=0"],
            "error: configs/cpu_quick.yaml: training.gradient_accumulation_steps must be >= 1, got 0",
        ),
        (["--config", "configs/nope.yaml"], "error: config file not found: configs/nope.yaml"),
        (["--quick_test", "stray"], "error: unexpected argument 'stray'"),
    ],
)
def test_config_errors_exit_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nima.cli import main

    monkeypatch.chdir(ROOT)  # the config paths are relative to the checkout
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


def test_config_error_from_the_script_exits_2_without_traceback() -> None:
    result = train_script("--config", "configs/cpu_quick.yaml", "--training.learnig_rate=1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: configs/cpu_quick.yaml: unknown key training.learnig_rate "
        "(did you mean training.learning_rate?)"
    )


def test_help_documents_overrides() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nima.cli", "train", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    for text in ("--config", "--quick_test", "--checkpoint", "--training.max_steps=20", "learning_rate"):
        assert text in result.stdout


def test_load_run_config_rules() -> None:
    run = cli.load_run_config(None, True, ["--training.max_steps=3"])
    assert run.training.max_steps == 3 and run.model.max_seq_len == 64
    with pytest.raises(ConfigError, match="either --config or --quick_test"):
        cli.load_run_config("configs/cpu_quick.yaml", True, [])
    with pytest.raises(ConfigError, match="no config given"):
        cli.load_run_config(None, False, [])


def test_quick_test_recipe_matches_cpu_quick_yaml() -> None:
    from nima.config import RunConfig

    quick = cli.load_run_config(None, True, []).to_dict()
    shipped = RunConfig.from_yaml(ROOT / "configs" / "cpu_quick.yaml").to_dict()
    quick["training"].pop("output_dir")
    shipped["training"].pop("output_dir")
    assert quick == shipped


@pytest.mark.slow
def test_quick_test_falls_back_to_the_stdlib_corpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An empty data folder, no mirror and no network (conftest): tiny Shakespeare cannot be had.
    code = cli.main(
        [
            "--quick_test",
            "--training.max_steps=3",
            f"--training.output_dir={tmp_path / 'out'}",
            f"--data.data_dir={tmp_path / 'data'}",
            "--training.eval_every=3",
            *TINY,
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "tiny Shakespeare is not available" in out
    assert "FALLBACK CORPUS" in out and "Python standard-library" in out
    assert "sample:" in out
    assert (tmp_path / "data" / "python_stdlib" / "char" / "train" / "00000.bin").is_file()
    assert (tmp_path / "out" / "checkpoints" / "step_3.pt").is_file()


@pytest.mark.slow
def test_bpe_vocabulary_is_trained_to_model_vocab_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "--config",
            str(ROOT / "configs" / "cpu_quick.yaml"),
            "--data.tokenizer=bpe",
            "--model.vocab_size=300",
            "--training.max_steps=2",
            f"--training.output_dir={tmp_path}",
            *TINY,
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "bpe tokenizer, vocab 300" in out
    assert "warning: model.vocab_size" not in out
    ckpt = torch.load(tmp_path / "checkpoints" / "step_2.pt", map_location="cpu", weights_only=True)
    assert ckpt["tokenizer"]["kind"] == "bpe" and ckpt["model_config"]["vocab_size"] == 300
