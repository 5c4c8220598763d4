"""Bad input, one test per row of docs/troubleshooting.md's table, through the real commands.

Every case checks what the project promises for a mistake: exactly one line on stderr, starting
with ``error:`` and the table's text, exit code 2, no traceback, and no good file already on disk
changed (the checkpoints and prepared data are hashed before and after). ``scripts/train.py`` runs
as a subprocess; ``nima eval`` and ``nima generate`` run through ``nima.cli.main``.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import model_args, model_config

from nima.checkpoint import load_checkpoint_file
from nima.checkpoint.compat import data_mismatch
from nima.cli import main as nima
from nima.data import prepare
from nima.data.shards import HEADER_BYTES
from nima.errors import ConfigError
from nima.files import sha256_file
from nima.models import create_model
from nima.training import Trainer, TrainingConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    *model_args(),
    "--training.precision=fp32",
    "--training.batch_size=4",
    "--training.eval_batches=2",
    "--training.warmup_steps=1",
    "--training.log_every=1",
]
Result = tuple[int, str, str]


def train(*args: str, data_dir: Path, preexec_fn: Callable[[], None] | None = None) -> Result:
    """``python scripts/train.py --config configs/cpu_quick.yaml <tiny model> *args``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NIMA_DATA_DIR": str(data_dir)}
    proc = subprocess.run(
        [sys.executable, "scripts/train.py", "--config", "configs/cpu_quick.yaml", *TINY, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=preexec_fn,
    )
    return proc.returncode, proc.stdout, proc.stderr


def command(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    """``nima <argv>`` in this process."""
    code = nima(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(result: Result, start: str) -> str:
    """Exit code 2 and one stderr line starting with ``start`` (and no traceback); returns it."""
    code, out, err = result
    assert "Traceback" not in out + err, err
    assert code == 2, f"exit code {code}\n{err}"
    lines = err.splitlines()
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err}"
    assert lines[0].startswith(start), f"{lines[0]!r}\ndoes not start with\n{start!r}"
    return lines[0]


def snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every file under ``folders``."""
    return {str(p): sha256_file(p) for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def good_run(session_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished run: checkpoints/step_2.pt and best_model.pt."""
    out = tmp_path_factory.mktemp("good") / "run"
    code, _, err = train(
        "--training.max_steps=2", "--training.save_every=2", "--training.eval_every=2",
        f"--training.output_dir={out}", data_dir=session_data_dir,
    )  # fmt: skip
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def char_data(session_data_dir: Path) -> Path:
    return prepare("tiny_shakespeare", "char", data_dir=session_data_dir).path


@pytest.fixture(scope="module")
def byte_data(session_data_dir: Path) -> Path:
    """The same text prepared with another tokenizer."""
    return prepare("tiny_shakespeare", "byte", data_dir=session_data_dir).path


@pytest.fixture(scope="module")
def bad_checkpoints(good_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints that must be refused: truncated, newer format, weights of another shape."""
    folder = tmp_path_factory.mktemp("bad")
    good = good_run / "checkpoints" / "step_2.pt"
    data = good.read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) * 2 // 3])
    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    torch.save({**ckpt, "format": "nima-checkpoint-v9"}, folder / "v9.pt")
    torch.save({**ckpt, "model_config": {**ckpt["model_config"], "n_layers": 3}}, folder / "other_shape.pt")
    return {name: folder / f"{name}.pt" for name in ("truncated", "v9", "other_shape")}


@pytest.fixture
def guarded(good_run: Path, char_data: Path):
    """Fails the test if a file of the good run or of the prepared data changed."""
    folders = (good_run / "checkpoints", char_data)
    before = snapshot(*folders)
    yield
    assert snapshot(*folders) == before, "a good file on disk changed"


# ---------------------------------------------------------------------------------------- config


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, start",
    [
        (["--training.max_steps=abc"], "training.max_steps must be an integer"),
        (["--model.d_model=abc"], "model.d_model must be an integer"),
        (["--training.async_checkpoint=maybe"], "training.async_checkpoint must be true or false"),
        (["--training.learning_rate=-1"], "training.learning_rate must be > 0"),
        (["--training.batch_size=0"], "training.batch_size must be >= 1"),
        (["--model.n_heads=5"], "model.d_model must be divisible by model.n_heads=5"),
        (["--training.learnig_rate=1"], "unknown key training.learnig_rate"),
    ],
    ids=["type-int", "type-model", "type-bool", "value-lr", "value-batch", "value-heads", "unknown-key"],
)
def test_bad_values_on_the_command_line(args, start, session_data_dir, guarded) -> None:
    assert_refused(train(*args, data_dir=session_data_dir), "error: configs/cpu_quick.yaml: " + start)


@pytest.mark.slow
def test_yaml_syntax_error_names_the_line(tmp_path: Path, session_data_dir: Path, guarded) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("model:\n  n_layers: 2\n   d_model: 32\ntraining:\n  max_steps: 2\n", encoding="utf-8")
    result = train("--config", str(config), data_dir=session_data_dir)  # the second --config wins
    assert_refused(result, f"error: {config}: line 3 is not valid YAML")


# ---------------------------------------------------------------------------------------- output


@pytest.mark.slow
@pytest.mark.parametrize("where", ["under-a-file", "a-file"])
def test_an_output_folder_that_cannot_be_written(where, tmp_path, session_data_dir, guarded) -> None:
    # Tests run as root, which ignores permission bits: a path through a regular file cannot be
    # written by anyone.
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file\n", encoding="utf-8")
    output_dir = blocker / "sub" if where == "under-a-file" else blocker
    result = train("--training.max_steps=2", f"--training.output_dir={output_dir}", data_dir=session_data_dir)
    line = assert_refused(result, f"error: training.output_dir {output_dir} cannot be written: ")
    assert "Not a directory" in line and "--training.output_dir" in line
    assert "data:" not in result[1]  # refused before anything else was done
    assert blocker.read_text(encoding="utf-8") == "a file\n"


def test_a_trainer_built_from_python_checks_its_output_folder_first(tmp_path: Path) -> None:
    # As the command line does: found when the Trainer is built, not at the first save. (Tests
    # run as root, which ignores permission bits: a path through a regular file cannot be written.)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="training.output_dir .* cannot be written: .*Not a directory"):
        Trainer(
            create_model(model_config(65)),
            TrainingConfig(output_dir=str(blocker / "out")),
            [
                {
                    "input_ids": torch.zeros(2, 8, dtype=torch.long),
                    "labels": torch.zeros(2, 8, dtype=torch.long),
                }
            ],
        )
    assert blocker.read_text(encoding="utf-8") == "a file\n"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_disk_that_fills_up_during_a_save(
    mode: str, good_run: Path, char_data: Path, tmp_path: Path, session_data_dir: Path
) -> None:
    # The file-size limit makes the write of step_4.pt fail with EFBIG, as a full disk fails with
    # ENOSPC: the write, not a check before it.
    out = tmp_path / "run"
    shutil.copytree(good_run, out)
    checkpoints = out / "checkpoints"
    before = snapshot(checkpoints, char_data)
    limit = (checkpoints / "step_2.pt").stat().st_size // 2

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = train(
        "--resume", "--training.max_steps=4", "--training.save_every=2", "--training.eval_every=0",
        f"--training.output_dir={out}", f"--training.async_checkpoint={str(mode == 'async').lower()}",
        data_dir=session_data_dir, preexec_fn=limit_file_size,
    )  # fmt: skip
    start = "writing a checkpoint in the background failed: " if mode == "async" else ""
    start = start or "cannot write checkpoint "
    line = assert_refused(result, f"error: {start}{checkpoints / 'step_4.pt'}: File too large (errno 27)")
    assert "intact" in line
    assert "resuming at step 2" in result[1]
    assert snapshot(checkpoints, char_data) == before
    assert load_checkpoint_file(checkpoints / "step_2.pt")["step"] == 2
    assert not (checkpoints / "step_4.pt").exists()
    assert not [p.name for p in checkpoints.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------- checkpoints


TRAIN_CHECKPOINT_ROWS = [
    # (bad checkpoint, how it is given, extra arguments, start of the error line; {path} is the file)
    ("truncated", "--checkpoint", [], "error: {path} is not a readable Nima checkpoint (corrupt, truncated"),
    ("truncated", "--resume", [], "error: {path} is not a readable Nima checkpoint (corrupt, truncated"),
    ("truncated", "--init_from", [], "error: {path} is not a readable Nima checkpoint (corrupt, truncated"),
    ("v9", "--checkpoint", [], "error: {path} has checkpoint format nima-checkpoint-v9, newer than"),
    ("v9", "--resume", [], "error: {path} has checkpoint format nima-checkpoint-v9, newer than"),
    ("v9", "--init_from", [], "error: {path} has checkpoint format nima-checkpoint-v9, newer than"),
    ("good", "--checkpoint", ["--model.n_layers=3"],
     "error: {path} does not match this model: model.n_layers: checkpoint 2, model 3"),
    ("good", "--resume", ["--model.d_model=64"],
     "error: {path} does not match this model: model.d_model: checkpoint 32, model 64"),
    ("good", "--checkpoint", ["--data.tokenizer=byte"],
     "error: {path} was trained with a different tokenizer: tokenizer.kind: checkpoint 'char', data 'byte'"),
    ("good", "--resume", ["--data.tokenizer=byte"],
     "error: {path} was trained with a different tokenizer: tokenizer.kind: checkpoint 'char', data 'byte'"),
    ("good", "--init_from", ["--data.tokenizer=byte"],
     "error: the data's tokenizer has 257 ids but the model of {path} only 65"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, option, extra, start",
    TRAIN_CHECKPOINT_ROWS,
    ids=[f"{kind}{''.join(extra) and '-' + extra[0].split('.')[1].split('=')[0]}-{option[2:]}"
         for kind, option, extra, _ in TRAIN_CHECKPOINT_ROWS],
)  # fmt: skip
def test_train_refuses_a_checkpoint_that_does_not_fit(
    kind, option, extra, start, good_run, bad_checkpoints, byte_data, tmp_path, session_data_dir, guarded
) -> None:
    source = good_run / "checkpoints" / "step_2.pt" if kind == "good" else bad_checkpoints[kind]
    out = tmp_path / "run"
    if option == "--resume":  # the run's newest checkpoint is the bad one
        shutil.copytree(good_run, out)
        path = out / "checkpoints" / "step_4.pt"
        if kind == "good":
            path = out / "checkpoints" / "step_2.pt"
        else:
            shutil.copyfile(source, path)
        args = ["--resume"]
    else:
        path = source
        args = [option, str(path)]
    mine = snapshot(out / "checkpoints") if out.is_dir() else {}
    args += [*extra, "--training.max_steps=4", f"--training.output_dir={out}"]
    result = train(*args, data_dir=session_data_dir)
    line = assert_refused(result, start.format(path=path))
    if kind == "truncated" and option == "--resume":
        assert "delete this one" in line
    if out.is_dir():
        assert snapshot(out / "checkpoints") == mine


def test_init_from_takes_the_model_shape_from_the_checkpoint(good_run: Path) -> None:
    # Not a bad input: --init_from builds the checkpoint's model, whatever the config's model says.
    from nima.config import RunConfig
    from nima.training.run_data import model_config_from

    run = RunConfig.from_yaml(ROOT / "configs" / "cpu_quick.yaml", overrides=["--model.n_layers=5"])
    tokenizer = type("Tok", (), {"vocab_size": 65})()
    fitted = model_config_from(run, good_run / "checkpoints" / "step_2.pt", tokenizer, say=lambda *a: None)
    assert fitted.model.n_layers == 2 and fitted.model.d_model == 32


@pytest.mark.parametrize("command_name", ["eval", "generate"])
@pytest.mark.parametrize(
    "kind, start",
    [
        ("missing", "error: checkpoint not found: {path}"),
        ("truncated", "error: {path} is not a readable Nima checkpoint (corrupt, truncated"),
        ("v9", "error: {path} has checkpoint format nima-checkpoint-v9, newer than this Nima reads"),
        ("other_shape", "error: {path}: weights do not fit the saved model config"),
    ],
)
def test_eval_and_generate_refuse_a_bad_checkpoint(
    command_name, kind, start, bad_checkpoints, tmp_path, capsys, guarded
) -> None:
    path = tmp_path / "missing.pt" if kind == "missing" else bad_checkpoints[kind]
    extra = ["--max_tokens", "200"] if command_name == "eval" else ["--max_new_tokens", "4"]
    result = command(capsys, command_name, "--checkpoint", str(path), "--device", "cpu", *extra)
    assert_refused(result, start.format(path=path))
    assert result[1] == ""


@pytest.mark.parametrize(
    "argv, start",
    [
        (["generate", "--tokenizer", "{byte}"], "error: tokenizer {byte} does not match checkpoint {ckpt}"),
        (["eval", "--tokenizer", "{byte}"], "error: tokenizer {byte} does not match checkpoint {ckpt}"),
        (["eval", "--data", "{byte}"], "error: {byte} was prepared with a different tokenizer"),
    ],
    ids=["generate-tokenizer", "eval-tokenizer", "eval-data"],
)
def test_eval_and_generate_refuse_another_tokenizer(argv, start, good_run, byte_data, capsys, guarded):
    ckpt = good_run / "checkpoints" / "step_2.pt"
    argv = [a.format(byte=byte_data) for a in argv]
    result = command(capsys, *argv, "--checkpoint", str(ckpt), "--device", "cpu")
    assert_refused(result, start.format(byte=byte_data, ckpt=ckpt))


BAD_OPTIONS = [
    ("eval --checkpoint x.pt --bogus", "unrecognized arguments: --bogus (see `nima eval --help`)"),
    ("eval --checkpoint x.pt --batch_size many", "argument --batch_size: invalid int value: 'many'"),
    ("eval --checkpoint x.pt --split test", "argument --split: invalid choice: 'test'"),
    ("eval", "the following arguments are required: --checkpoint"),
    ("generate --checkpoint x.pt --temprature 1", "unrecognized arguments: --temprature 1"),
    ("generate --checkpoint x.pt --max_new_tokens lots", "argument --max_new_tokens: invalid int value"),
    ("generate --checkpoint x.pt --prompt a --interactive", "argument --interactive: not allowed with"),
    ("generate --checkpoint x.pt --num_samples 0", "--num_samples 0 must be at least 1"),
    ("generate", "the following arguments are required: --checkpoint"),
]


@pytest.mark.parametrize("argv, start", BAD_OPTIONS)
def test_eval_and_generate_bad_options(argv, start, capsys) -> None:
    assert_refused(command(capsys, *argv.split()), "error: " + start)


# ---------------------------------------------------------------------------------------- data


@pytest.mark.slow
def test_data_changed_after_preparation_is_refused_on_resume(
    tmp_path: Path, tiny_shakespeare_file: Path
) -> None:
    data_dir = tmp_path / "data"
    corpus = tmp_path / "corpus.txt"
    lines = tiny_shakespeare_file.read_text(encoding="utf-8").splitlines(keepends=True)[:3000]
    corpus.write_text("".join(lines), encoding="utf-8")
    out = tmp_path / "run"
    common = [f"--data.dataset={corpus}", f"--data.data_dir={data_dir}", f"--training.output_dir={out}",
              "--training.eval_every=0"]  # fmt: skip
    code, _, err = train(*common, "--training.max_steps=2", "--training.save_every=2", data_dir=data_dir)
    assert code == 0, err
    checkpoint = out / "checkpoints" / "step_2.pt"
    recorded = load_checkpoint_file(checkpoint)["data"]
    assert recorded["train_tokens"] > 0 and recorded["val_tokens"] > 0 and len(recorded["sha256"]) == 64
    before = snapshot(out / "checkpoints")

    # The same characters (so the same char tokenizer), another text: prepared anew on resume.
    corpus.write_text("".join(reversed(lines)), encoding="utf-8")
    line = assert_refused(
        train(*common, "--training.max_steps=4", "--resume", data_dir=data_dir),
        f"error: {checkpoint} was trained on other data: it recorded {recorded['train_tokens']} train",
    )
    assert f"--init_from {checkpoint}" in line and "resume on the data it was trained on" in line
    assert snapshot(out / "checkpoints") == before

    # The way forward the message names: a new run from its weights, on the new data.
    new = tmp_path / "new"
    args = [*common[:2], f"--training.output_dir={new}", "--training.max_steps=1", "--training.eval_every=0"]
    code, stdout, err = train(*args, "--init_from", str(checkpoint), data_dir=data_dir)
    assert code == 0, err
    assert "fine-tuning from" in stdout


def test_old_checkpoints_without_a_data_record_still_resume(good_run: Path, tmp_path: Path) -> None:
    from nima.config import RunConfig
    from nima.training.recipe import build_run

    ckpt = torch.load(good_run / "checkpoints" / "step_2.pt", map_location="cpu", weights_only=True)
    ckpt["data"] = {"prepared_path": ckpt["data"]["prepared_path"]}  # as written before the record
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    run = RunConfig.from_yaml(
        ROOT / "configs" / "cpu_quick.yaml",
        overrides=[*TINY, "--training.max_steps=3", f"--training.output_dir={tmp_path / 'out'}"],
    )
    built = build_run(run, checkpoint=old, say=lambda *a: None)
    assert built.trainer.step == 2


def test_data_mismatch_compares_only_recorded_identities() -> None:
    a = {"prepared_path": "/d/char", "train_tokens": 10, "val_tokens": 2, "sha256": "a" * 64}
    b = {**a, "train_tokens": 11, "sha256": "b" * 64}
    assert data_mismatch(a, dict(a)) is None
    assert data_mismatch({"prepared_path": "/d/char"}, b) is None  # an old checkpoint: not checked
    assert data_mismatch(a, None) is None
    assert data_mismatch(a, b) == (
        "it recorded 10 train + 2 val tokens, data sha256 aaaaaaaaaaaa, and /d/char now holds "
        "11 train + 2 val tokens, data sha256 bbbbbbbbbbbb"
    )


@pytest.mark.slow
def test_token_ids_out_of_range_are_refused_before_training(tmp_path, tiny_shakespeare_file) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "tiny_shakespeare").mkdir(parents=True)
    (data_dir / "tiny_shakespeare" / "input.txt").symlink_to(tiny_shakespeare_file)
    prepared = prepare("tiny_shakespeare", "char", data_dir=data_dir)
    shard = prepared.shard_paths("train")[0]
    tokens = np.memmap(shard, dtype=prepared.dtype, mode="r+", offset=HEADER_BYTES)
    tokens[123_456] = 300  # a .bin written by another tool, for another vocabulary
    tokens.flush()
    del tokens
    before = snapshot(prepared.path)
    out = tmp_path / "run"
    result = train(f"--data.data_dir={data_dir}", "--training.max_steps=2", f"--training.output_dir={out}",
                   data_dir=data_dir)  # fmt: skip
    assert_refused(result, f"error: {shard} holds token id 300, but the vocabulary size is 65 (ids 0 to")
    assert "step 1" not in result[1]
    assert snapshot(prepared.path) == before
    assert not list((out / "checkpoints").glob("*.pt"))
