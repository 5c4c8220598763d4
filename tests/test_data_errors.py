"""Every bad input: one line on stderr and exit code 2 from the CLI, a DataError from the API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nima.cli import main as nima_main
from nima.data import prepare, prepare_dataset
from nima.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = nima_main(["prepare", "--quiet", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"plain ascii first\n" * 3 + b"caf\xe9\n")
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(json.dumps({"body": "hi"}) + "\n")
    broken_jsonl = tmp_path / "broken.jsonl"
    broken_jsonl.write_text('{"text": "ok"}\n{oops\n')
    empty_folder = tmp_path / "nothing"
    empty_folder.mkdir()
    small = tmp_path / "small.txt"
    small.write_text("hello world, hello\n" * 5)
    return {
        "empty": empty,
        "latin": latin,
        "jsonl": jsonl,
        "broken_jsonl": broken_jsonl,
        "empty_folder": empty_folder,
        "small": small,
        "missing": tmp_path / "missing.txt",
    }


CASES = [
    # (name, extra args, input key or None, fragments the message must contain)
    ("empty file", [], "empty", ["empty"]),
    ("not utf-8", [], "latin", ["latin.txt", "byte offset 57", "--encoding"]),
    ("missing path", [], "missing", ["missing.txt", "no such file"]),
    (
        "unknown dataset",
        ["--dataset", "wikitext_9000"],
        None,
        ["unknown dataset 'wikitext_9000'", "tiny_shakespeare"],
    ),
    ("vocab too small", ["--tokenizer", "bpe", "--vocab_size", "100"], "small", ["--vocab_size 100", "257"]),
    ("bpe without vocab", ["--tokenizer", "bpe"], "small", ["--vocab_size"]),
    ("jsonl field", [], "jsonl", ["no field 'text'", "--text_field"]),
    ("broken jsonl", [], "broken_jsonl", ["line 2", "not valid JSON"]),
    ("folder without text files", [], "empty_folder", ["has no .txt, .md, .jsonl"]),
    ("unknown encoding", ["--encoding", "klingon-8"], "small", ["klingon-8"]),
    ("bad val fraction", ["--val_fraction", "1.5"], "small", ["--val_fraction"]),
    (
        "unknown tokenizer",
        ["--tokenizer", "word"],
        "small",
        ["unknown tokenizer 'word': choose one of char, byte, bpe"],
    ),
    ("unknown option", ["--vocabsize", "5"], "small", ["--vocabsize"]),
]


@pytest.mark.parametrize("name,args,key,fragments", CASES, ids=[c[0] for c in CASES])
def test_cli_bad_input(name, args, key, fragments, bad_inputs, tmp_path, capsys) -> None:
    dataset = ["--dataset", str(bad_inputs[key])] if key else []
    code, _, err = _cli(capsys, *dataset, *args, "--data_dir", str(tmp_path / "data"))
    _assert_one_line_error(code, err, *fragments)
    # Nothing half-written is left behind.
    leftovers = (
        [p for p in (tmp_path / "data").rglob("*") if p.is_file()] if (tmp_path / "data").exists() else []
    )
    assert leftovers == []


def test_cli_no_network_says_where_to_put_the_file(tmp_path: Path, capsys) -> None:
    code, _, err = _cli(capsys, "--dataset", "tiny_shakespeare", "--data_dir", str(tmp_path / "empty_dir"))
    target = tmp_path / "empty_dir" / "tiny_shakespeare" / "input.txt"
    _assert_one_line_error(code, err, "download", str(target))


def test_api_raises_data_error(bad_inputs: dict[str, Path], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    for key in ("empty", "latin", "missing", "jsonl", "empty_folder"):
        with pytest.raises(DataError):
            prepare(bad_inputs[key], "char", data_dir=data_dir)
    with pytest.raises(DataError, match="unknown dataset"):
        prepare("nope", data_dir=data_dir)
    with pytest.raises(DataError, match="at least 257"):
        prepare(bad_inputs["small"], "bpe", vocab_size=10, data_dir=data_dir)
    with pytest.raises(DataError, match="unknown tokenizer"):
        prepare(bad_inputs["small"], "word", data_dir=data_dir)


def test_corpus_shorter_than_one_window(bad_inputs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"has 85 tokens.*max_length <= 84"):
        prepare_dataset(str(bad_inputs["small"]), "char", max_length=512, data_dir=tmp_path / "data")
    train, _, _ = prepare_dataset(str(bad_inputs["small"]), "char", max_length=84, data_dir=tmp_path / "data")
    assert len(train) == 1


def test_latin_file_works_with_its_encoding(bad_inputs: dict[str, Path], tmp_path: Path, capsys) -> None:
    code, out, err = _cli(
        capsys,
        "--dataset",
        str(bad_inputs["latin"]),
        "--encoding",
        "latin-1",
        "--data_dir",
        str(tmp_path / "data"),
    )
    assert code == 0, err
    assert str(tmp_path / "data" / "latin" / "char") in out and "tokens" in out


def test_script_runs_as_the_guide_says(session_data_dir: Path) -> None:
    """The guide's command, as a subprocess: prints where the output is and the token counts."""
    result = subprocess.run(
        [sys.executable, "scripts/prepare_data.py", "--dataset", "tiny_shakespeare", "--tokenizer", "char"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert str(session_data_dir / "tiny_shakespeare" / "char") in result.stdout
    assert "1,003,856" in result.stdout and "111,538" in result.stdout


def test_script_bad_input_has_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "scripts/prepare_data.py", "--dataset", str(tmp_path / "nope.txt")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    _assert_one_line_error(2, result.stderr, "nope.txt")


def test_unwritable_data_dir_is_a_one_line_error(bad_inputs: dict[str, Path], tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the data folder should be")
    code, _, err = _cli(capsys, "--dataset", str(bad_inputs["small"]), "--data_dir", str(blocker))
    _assert_one_line_error(code, err, "cannot write prepared data", "--data_dir")
