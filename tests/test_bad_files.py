"""Each class of bad input of issue 30, through the real commands: one ``error:`` line, exit 2.

The classes: a file that is not a checkpoint at all; an encoding that is not a text codec or
needs a byte-order mark; a damaged Hugging Face folder; an output path that cannot be created;
messages that misled (a config that is a folder, a vocabulary larger than the corpus gives,
sampling options checked after loading, a report of a run whose config.yaml is invalid); a
progress bar's carriage return before the error in a log, and an empty folder left by a failed
prepare; an empty config file; extreme values (a model too large to build, a billion threads).
Each row of docs/troubleshooting.md's table added with them names its test here. The fuzz test
(tests/test_fuzz_commands.py) keeps the classes closed for generated inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from inference_helpers import save_checkpoint, train_tiny_model
from tiny import model_args

from nima.cli import main as nima
from nima.files import sha256_file

ROOT = Path(__file__).resolve().parents[1]
NOT_A_CHECKPOINT = "is not a readable Nima checkpoint (corrupt, truncated or not saved by Nima): "


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``nima <argv>`` in this process: exit code, stdout, stderr."""
    code = nima(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(result: tuple[int, str, str], *fragments: str) -> str:
    """Exit code 2, no traceback, one stderr line starting ``error: `` holding ``fragments``."""
    code, out, err = result
    assert "Traceback" not in out + err, err
    assert code == 2, f"exit code {code}\n{err}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in\n{lines[0]}"
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained checkpoint with its tokenizer beside it."""
    model, tok = train_tiny_model(steps=5)
    return save_checkpoint(model, tok, tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def hf_folder(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "hf"
    assert nima(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    return out


@pytest.fixture
def blocker(tmp_path: Path) -> Path:
    """A regular file where a folder would have to be (even root cannot create under it)."""
    path = tmp_path / "not_a_folder"
    path.write_text("a file\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path: Path, tiny_shakespeare_file: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(tiny_shakespeare_file.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------- not a checkpoint


@pytest.mark.parametrize("command", ["eval", "generate", "export", "init_from"])
def test_a_text_file_named_pt_is_not_a_checkpoint(command, tmp_path, capsys) -> None:
    fake = tmp_path / "notes.pt"
    fake.write_text("hello\nthis is not a checkpoint\n", encoding="utf-8")
    argv = {
        "eval": ["eval", "--checkpoint", str(fake), "--device", "cpu"],
        "generate": ["generate", "--checkpoint", str(fake), "--device", "cpu"],
        "export": ["export", "--checkpoint", str(fake), "--out", str(tmp_path / "hf")],
        "init_from": [
            "train",
            "--quick_test",
            *model_args(),
            "--init_from",
            str(fake),
            f"--training.output_dir={tmp_path / 'run'}",
            "--training.max_steps=1",
        ],
    }[command]
    line = refused(run(capsys, *argv), f"error: {fake} {NOT_A_CHECKPOINT}")
    assert "KeyError" in line  # what the unpickler raised on these bytes, named
    assert not (tmp_path / "hf").exists()


def test_random_bytes_and_a_json_file_are_not_checkpoints(tmp_path, capsys) -> None:
    for name, data in [("noise.pt", bytes(range(256)) * 4), ("config.pt", b'{"model": {}}')]:
        (tmp_path / name).write_bytes(data)
        refused(
            run(capsys, "eval", "--checkpoint", str(tmp_path / name)),
            f"error: {tmp_path / name} {NOT_A_CHECKPOINT}",
        )


# ---------------------------------------------------------------------------------- encodings


@pytest.mark.parametrize("encoding", ["rot13", "hex", "base64", "zlib", "uu"])
def test_a_codec_that_is_not_a_text_encoding(encoding, corpus, tmp_path, capsys) -> None:
    result = run(
        capsys,
        "prepare",
        "--quiet",
        "--dataset",
        str(corpus),
        "--data_dir",
        str(tmp_path / "d"),
        "--encoding",
        encoding,
    )
    refused(result, f"error: --encoding {encoding!r} is not a text encoding")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_an_encoding_that_needs_a_byte_order_mark(encoding, tmp_path, capsys) -> None:
    text = tmp_path / "no_bom.txt"
    text.write_bytes("hello world\n".encode("utf-16-le") * 50 if encoding == "utf-16" else b"abcd" * 100)
    result = run(
        capsys,
        "prepare",
        "--quiet",
        "--dataset",
        str(text),
        "--data_dir",
        str(tmp_path / "d"),
        "--encoding",
        encoding,
    )
    refused(result, f"error: {text} is not valid {encoding} text at byte offset 0", "--encoding")


def test_train_refuses_a_data_encoding_that_is_not_text(tmp_path, capsys) -> None:
    result = run(capsys, "train", "--quick_test", "--data.encoding=hex", f"--training.output_dir={tmp_path}")
    refused(result, "error: --quick_test: data.encoding 'hex' is not a text encoding")


def test_train_refuses_a_corpus_without_the_byte_order_mark_its_encoding_needs(tmp_path, capsys) -> None:
    text = tmp_path / "no_bom.txt"
    text.write_bytes("to be or not to be\n".encode("utf-16-le") * 200)
    result = run(
        capsys,
        "train",
        "--quick_test",
        "--data.encoding=utf-16",
        f"--data.dataset={text}",
        f"--data.data_dir={tmp_path / 'd'}",
        f"--training.output_dir={tmp_path / 'run'}",
    )
    refused(
        result,
        f"error: {text} is not valid utf-16 text at byte offset 0 (UTF-16 stream does not start with BOM)",
    )


# ---------------------------------------------------------------------------------- Hugging Face folders


@pytest.mark.parametrize(
    "damage, start",
    [
        ("truncated config", "config.json is not a readable JSON file: Unterminated string"),
        ("config a list", "config.json holds a JSON list, not an object of settings"),
        ("config missing n_embd", "config.json has no 'n_embd', which gpt2 configs need"),
        ("config n_layer a string", "config.json cannot be imported: model.n_layers must be an integer"),
        (
            "truncated weights",
            "model.safetensors is not a readable safetensors file (truncated or damaged): ",
        ),
        ("truncated tokenizer", "tokenizer.json is not a readable Hugging Face tokenizer: "),
    ],
)
def test_import_of_a_damaged_hugging_face_folder(damage, start, hf_folder, tmp_path, capsys) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    for file in hf_folder.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if damage == "truncated config":
        (folder / "config.json").write_text(json.dumps(config)[:60], encoding="utf-8")
    elif damage == "config a list":
        (folder / "config.json").write_text("[1, 2]", encoding="utf-8")
    elif damage == "config missing n_embd":
        (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "n_embd"}))
    elif damage == "config n_layer a string":
        (folder / "config.json").write_text(json.dumps({**config, "n_layer": "two"}))
    elif damage == "truncated weights":
        data = (hf_folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (folder / "tokenizer_config.json").unlink()  # so that the tokenizer.json itself is read
        (folder / "tokenizer.json").write_text((hf_folder / "tokenizer.json").read_text()[:80])
    out = tmp_path / "imported"
    line = refused(run(capsys, "import", "--hf_model", str(folder), "--out", str(out)), f"error: {folder}/")
    assert start in line
    assert not out.exists()


# ---------------------------------------------------------------------------------- output paths


@pytest.mark.parametrize("where", ["under-a-file", "a-file"])
@pytest.mark.parametrize("command", ["export", "import", "prepare", "prepare-known", "plot"])
def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(
    command, where, blocker, checkpoint, hf_folder, corpus, tmp_path, capsys
) -> None:
    target = blocker / "sub" if where == "under-a-file" else blocker
    run_dir = checkpoint.parent.parent
    (run_dir / "logs").mkdir(exist_ok=True)
    (run_dir / "logs" / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n', encoding="utf-8")
    argv, start = {
        "export": (["export", "--checkpoint", str(checkpoint), "--out", str(target)], f"--out {target}"),
        "import": (
            ["import", "--hf_model", str(hf_folder), "--out", str(target)],
            f"--out {target}/checkpoints",
        ),
        "prepare": (
            ["prepare", "--quiet", "--dataset", str(corpus), "--data_dir", str(target)],
            f"cannot write prepared data under {target}/corpus",
        ),
        "prepare-known": (
            ["prepare", "--quiet", "--data_dir", str(target)],
            f"cannot write tiny_shakespeare under {target}/tiny_shakespeare",
        ),
        "plot": (
            ["plot", str(run_dir), "--output", str(target / "x.png" if where == "a-file" else target)],
            "--output ",
        ),
    }[command]
    if command == "export" and where == "a-file":
        start = f"{target} is a file, not a folder"
    if command == "plot" and where == "a-file":
        start = f"--output {target}/x.png cannot be written: {target} is a file, not a folder"
    before = snapshot(tmp_path)
    line = refused(run(capsys, *argv), f"error: {start}")
    assert "file, not a folder" in line or "Not a directory" in line
    assert snapshot(tmp_path) == before  # nothing written, nothing left


# ---------------------------------------------------------------------------------- messages


def test_a_config_that_is_a_folder_is_not_called_missing(tmp_path, capsys) -> None:
    refused(
        run(capsys, "train", "--config", str(tmp_path)), f"error: config {tmp_path} is a folder, not a file"
    )


def test_a_vocabulary_larger_than_the_corpus_gives_is_named_after_what_it_holds(
    corpus, tmp_path, capsys
) -> None:
    argv = [
        "prepare",
        "--quiet",
        "--dataset",
        str(corpus),
        "--tokenizer",
        "bpe",
        "--vocab_size",
        "100000",
        "--data_dir",
        str(tmp_path),
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    folders = [p.name for p in (tmp_path / "corpus").iterdir()]
    assert len(folders) == 1 and folders[0].startswith("bpe-") and folders[0] != "bpe-100000"
    size = int(folders[0].split("-")[1])
    assert f"note: the corpus gave {size} BPE ids, fewer than the 100000 asked" in err
    assert f"vocab_size {size}" in out
    code, out, err = run(capsys, *argv)  # asked again: found again, not prepared anew
    assert code == 0 and out.startswith("already prepared") and f"bpe-{size}" in out


def test_a_vocabulary_no_trainer_could_hold_is_refused(corpus, tmp_path, capsys) -> None:
    result = run(
        capsys,
        "prepare",
        "--quiet",
        "--dataset",
        str(corpus),
        "--tokenizer",
        "bpe",
        "--vocab_size",
        "1000000000",
        "--data_dir",
        str(tmp_path / "d"),
    )
    refused(result, "error: --vocab_size 1000000000 is more than Nima trains BPE to")


@pytest.mark.parametrize(
    "option, value, start",
    [
        ("--top_p", "2", "error: --top_p must be in (0, 1], got 2.0"),
        ("--temperature", "nan", "error: --temperature must be a finite number >= 0"),
        ("--temperature", "inf", "error: --temperature must be a finite number >= 0"),
        ("--top_k", "0", "error: --top_k must be a whole number >= 1, got 0"),
        ("--repetition_penalty", "-1", "error: --repetition_penalty must be a finite number > 0"),
        (
            "--seed",
            "99999999999999999999999",
            "error: --seed must be a whole number from -2**63 to 2**64 - 1",
        ),
        ("--threads", "1000000", "error: --threads 1000000 is more than 4 per CPU of this machine"),
    ],
)
def test_sampling_options_are_checked_before_the_model_is_loaded(option, value, start, tmp_path, capsys):
    # The checkpoint does not even exist: the option is what is reported, and nothing is printed.
    result = run(
        capsys, "generate", "--checkpoint", str(tmp_path / "missing.pt"), "--prompt", "ROMEO:", option, value
    )
    line = refused(result, start)
    assert "or None" not in line and result[1] == ""


def test_report_of_a_run_with_an_invalid_config_says_one_thing(checkpoint, capsys) -> None:
    run_dir = checkpoint.parent.parent
    config = run_dir / "config.yaml"
    config.write_text("model:\n  n_layers: [1,\n", encoding="utf-8")
    try:
        code, _, err = run(capsys, "report", str(run_dir))
        assert code == 0, err
        assert (
            err.startswith(f"warning: {config}: line 3 is not valid YAML")
            and "report.md leaves it out" in err
        )
        report = (run_dir / "report.md").read_text(encoding="utf-8")
        assert "`config.yaml` cannot be used: " in report
        assert "no config.yaml" not in report and f"--config {config}" not in report
    finally:
        config.unlink()


# ---------------------------------------------------------------------------------- logs


def test_the_error_line_starts_a_line_of_the_log_after_a_progress_bar(
    tmp_path, tiny_shakespeare_file
) -> None:
    # A decoding error in the second half of the file, while the scan's progress bar is drawn; stderr
    # is a pipe (a log), as under a scheduler.
    text = tmp_path / "half_latin.txt"
    good = tiny_shakespeare_file.read_bytes()[:300_000]
    text.write_bytes(good + b"caf\xe9\n" + good)
    data_dir = tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "nima.cli", "prepare", "--dataset", str(text), "--data_dir", str(data_dir)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.split("\n") if line.startswith("error: ")]  # grep '^error:'
    assert len(errors) == 1 and f"{text} is not valid utf-8 text at byte offset 300003" in errors[0], (
        proc.stderr
    )
    assert not data_dir.exists()  # and no empty data folder left behind


def test_a_failed_prepare_leaves_no_folder_behind(tmp_path, capsys) -> None:
    text = tmp_path / "latin.txt"
    text.write_bytes(b"caf\xe9\n" * 100)
    data_dir = tmp_path / "data"
    refused(run(capsys, "prepare", "--quiet", "--dataset", str(text), "--data_dir", str(data_dir)), "error: ")
    assert not data_dir.exists()
    (data_dir / "other").mkdir(parents=True)  # an existing data folder stays, only what was made goes
    refused(run(capsys, "prepare", "--quiet", "--dataset", str(text), "--data_dir", str(data_dir)), "error: ")
    assert sorted(p.name for p in data_dir.iterdir()) == ["other"]


# ---------------------------------------------------------------------------------- empty config


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_config_file_is_refused(text, tmp_path, capsys) -> None:
    config = tmp_path / "empty.yaml"
    config.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step_5.pt").write_bytes(b"an earlier run")
    result = run(capsys, "train", "--config", str(config), f"--training.output_dir={out}")
    refused(result, f"error: {config} is empty: a config file needs at least one of the sections")
    assert (out / "checkpoints" / "step_5.pt").read_bytes() == b"an earlier run"  # not moved aside
    assert not (out / "earlier_runs").exists()


# ---------------------------------------------------------------------------------- extreme values


@pytest.mark.parametrize(
    "override", ["--model.n_layers=1000000000", "--model.max_seq_len=100000000000", "--model.d_model=4000000"]
)
def test_a_model_too_large_to_build_is_refused_before_it_is_built(override, tmp_path, capsys) -> None:
    extra = ["--model.n_heads=4"] if "d_model" in override else []
    result = run(capsys, "train", "--quick_test", override, *extra, f"--training.output_dir={tmp_path}")
    refused(result, "error: this model cannot be built here: ", "GiB for their fp32 weights alone")


def test_generating_more_tokens_than_memory_holds_is_one_line(checkpoint, capsys) -> None:
    code, out, err = run(
        capsys,
        "generate",
        "--checkpoint",
        str(checkpoint),
        "--prompt",
        "R",
        "--max_new_tokens",
        "1000000000000000",
        "--device",
        "cpu",
    )
    assert code == 2 and "Traceback" not in err  # found when the buffer is made: the prompt is out
    assert err.splitlines()[-1].startswith(
        "error: max_new_tokens=1000000000000000 is more tokens than this machine"
    )
