"""Loading a checkpoint with its tokenizer, and `nima generate` end to end on a tiny trained model."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from inference_helpers import TEXT, generate_args, save_checkpoint, train_tiny_model
from tiny import model_config

from nima.cli import main as nima_main
from nima.data.tokenizer import ByteTokenizer, CharTokenizer
from nima.errors import CheckpointError, ConfigError
from nima.evaluation import evaluate_model
from nima.inference import SamplingSettings, generate_text, load_for_inference, stream_text
from nima.models import create_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained():
    return train_tiny_model()


@pytest.fixture
def checkpoint(trained, tmp_path) -> Path:
    model, tok = trained
    return save_checkpoint(model, tok, tmp_path / "run")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = nima_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_trained_model_beats_uniform_on_its_training_text(trained):
    model, tok = trained
    result = evaluate_model(model, TEXT, tokenizer=tok)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    assert result.loss < 0.5 * math.log(tok.vocab_size)
    assert result.bits_per_char < 0.5 * math.log2(tok.vocab_size)


def test_load_finds_the_recorded_tokenizer(checkpoint, trained):
    loaded = load_for_inference(checkpoint, device="cpu")
    assert loaded.tokenizer.identity() == trained[1].identity()
    assert loaded.tokenizer_path == checkpoint.parent.parent / "tokenizer.json"
    assert not loaded.model.training
    assert loaded.info["step"] == 150 and "model" not in loaded.info


def test_load_finds_a_moved_tokenizer_in_the_data_dir_by_hash(trained, tmp_path):
    model, tok = trained
    ckpt = save_checkpoint(model, tok, tmp_path / "run")
    (tmp_path / "run" / "tokenizer.json").unlink()
    other = tmp_path / "data" / "other" / "char"
    other.mkdir(parents=True)
    CharTokenizer("xyz").save(other / "tokenizer.json")
    home = tmp_path / "data" / "mine" / "char"
    home.mkdir(parents=True)
    tok.save(home / "tokenizer.json")
    loaded = load_for_inference(ckpt, device="cpu", data_dir=tmp_path / "data")
    assert loaded.tokenizer_path == home / "tokenizer.json"


def test_mismatched_tokenizer_is_refused(checkpoint, tmp_path):
    wrong = CharTokenizer(TEXT + "Z").save(tmp_path / "wrong.json")
    with pytest.raises(CheckpointError, match="does not match"):
        load_for_inference(checkpoint, tokenizer=wrong, device="cpu")
    # same kind and vocabulary size, different characters: caught by the hash
    swapped = CharTokenizer(TEXT.replace("Z", "").replace("?", "!")).save(tmp_path / "swapped.json")
    with pytest.raises(CheckpointError, match="sha256"):
        load_for_inference(checkpoint, tokenizer=swapped, device="cpu")


def test_mismatched_tokenizer_on_the_command_line_is_one_line_exit_2(checkpoint, tmp_path, capsys):
    wrong = ByteTokenizer().save(tmp_path / "byte.json")
    code, out, err = run_cli(capsys, "generate", "--checkpoint", str(checkpoint), "--tokenizer", str(wrong))
    assert code == 2 and out == ""
    assert err.startswith("error: tokenizer") and err.count("\n") == 1
    assert "byte tokenizer" in err and "char tokenizer" in err


def test_missing_tokenizer_says_how_to_fix(trained, tmp_path):
    model, tok = trained
    ckpt = save_checkpoint(model, tok, tmp_path / "run")
    (tmp_path / "run" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="--tokenizer"):
        load_for_inference(ckpt, device="cpu", data_dir=tmp_path / "empty")


def test_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "generate", "--checkpoint", str(tmp_path / "nope.pt"))
    assert code == 2 and "checkpoint not found" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(junk))
    assert code == 2 and err.count("\n") == 1


def test_generate_prints_prompt_and_continuation_reproducibly(checkpoint, capsys):
    argv = generate_args(checkpoint, 40, "--device", "cpu")
    code, first, err = run_cli(capsys, *argv)
    assert code == 0
    assert first.startswith("ROMEO:") and len(first) == len("ROMEO:") + 40 + 1
    assert "40 tokens" in err and "step 150" in err
    _, second, _ = run_cli(capsys, *argv)
    assert first == second
    _, other, _ = run_cli(capsys, *argv[:-4], "--seed", "1", "--device", "cpu")
    assert other != first


def test_greedy_generation_ignores_the_seed(checkpoint, capsys):
    argv = [
        "generate",
        "--checkpoint",
        str(checkpoint),
        "--prompt",
        "JULIET:",
        "--temperature",
        "0",
        "--max_new_tokens",
        "12",
        "--device",
        "cpu",
        "--seed",
    ]
    code, first, _ = run_cli(capsys, *argv, "0")
    assert code == 0 and first.startswith("JULIET:") and len(first) == len("JULIET:") + 13
    assert run_cli(capsys, *argv, "1")[1] == first


def test_unknown_character_in_prompt_is_one_line_naming_it(checkpoint, capsys):
    code, out, err = run_cli(capsys, "generate", "--checkpoint", str(checkpoint), "--prompt", "ROMEO§")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "'§'" in err


def test_num_samples_and_prompt_file(checkpoint, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("JULIET:\n", encoding="utf-8")
    code, out, _ = run_cli(
        capsys,
        "generate",
        "--checkpoint",
        str(checkpoint),
        "--prompt_file",
        str(prompt),
        "--num_samples",
        "3",
        "--max_new_tokens",
        "10",
        "--seed",
        "3",
    )
    assert code == 0
    assert out.count("--- sample ") == 3 and "--- sample 3/3 ---" in out
    assert out.count("JULIET:\n") >= 3
    code, _, err = run_cli(
        capsys, "generate", "--checkpoint", str(checkpoint), "--prompt_file", str(tmp_path / "x")
    )
    assert code == 2 and "prompt file not found" in err
    code, _, err = run_cli(capsys, "generate", "--checkpoint", str(checkpoint), "--num_samples", "0")
    assert code == 2 and "--num_samples" in err
    code, _, err = run_cli(capsys, "generate", "--checkpoint", str(checkpoint), "--threads", "0")
    assert code == 2 and "--threads 0" in err


def test_interactive_reads_prompts_line_by_line(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("ROMEO:\nbad§\n\nJULIET:\nquit\nNEVER:\n"))
    code, out, err = run_cli(
        capsys,
        "generate",
        "--checkpoint",
        str(checkpoint),
        "--interactive",
        "--max_new_tokens",
        "5",
        "--seed",
        "0",
    )
    assert code == 0
    lines = out.splitlines()
    assert out.startswith("ROMEO:") and any(line.startswith("JULIET:") for line in lines)
    assert "NEVER" not in out  # 'quit' ended the session
    assert "'§'" in err  # a bad line is reported and the session goes on


def test_stream_yields_pieces_that_add_up_to_the_whole(trained):
    model, tok = trained
    settings = SamplingSettings(max_new_tokens=25, temperature=1.0, seed=5)
    pieces = list(stream_text(model, tok, "ROMEO:", settings))
    assert len(pieces) == 25
    assert "".join(pieces) == generate_text(model, tok, "ROMEO:", settings)


def test_byte_level_stream_never_prints_half_a_character():
    torch.manual_seed(0)
    tok = ByteTokenizer()
    model = create_model(model_config(vocab_size=257))
    pieces = list(stream_text(model, tok, "é", SamplingSettings(max_new_tokens=60, temperature=2.0, seed=1)))
    # Random bytes are mostly invalid UTF-8: each piece is whole characters (invalid bytes become U+FFFD).
    assert all(isinstance(p, str) and p for p in pieces)
    text = "".join(pieces)
    assert text.encode("utf-8", errors="surrogatepass")


def test_empty_prompt_starts_from_end_of_text_or_asks_for_a_prompt(trained):
    model, tok = trained  # a char tokenizer without an end-of-text token: starts from a newline
    assert len(generate_text(model, tok, "", SamplingSettings(max_new_tokens=3, seed=0))) == 3
    no_newline = CharTokenizer("abc")
    small = create_model(model_config(vocab_size=3))
    with pytest.raises(ConfigError, match="--prompt"):
        generate_text(small, no_newline, "", SamplingSettings(max_new_tokens=3))
    byte_model = create_model(model_config(vocab_size=257))
    assert isinstance(
        generate_text(byte_model, ByteTokenizer(), "", SamplingSettings(max_new_tokens=3, seed=0)), str
    )


def test_eval_cli_on_a_text_file_json(checkpoint, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", str(checkpoint), "--text", str(text), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["tokens"] == len(TEXT) - 1
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert report["bits_per_char"] == pytest.approx(report["bits_per_token"])  # char tokenizer
    assert report["bytes"] == len(TEXT.encode()) - 1
    assert report["context_length"] == 32 and report["stride"] == 32
    code, out, _ = run_cli(
        capsys,
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--text",
        str(text),
        "--stride",
        "8",
        "--max_tokens",
        "100",
    )
    assert code == 0 and "tokens scored   100" in out and "stride 8" in out


def test_eval_cli_errors(checkpoint, tmp_path, capsys):
    code, _, err = run_cli(
        capsys, "eval", "--checkpoint", str(checkpoint), "--text", str(tmp_path / "no.txt")
    )
    assert code == 2 and "not found" in err
    bad = tmp_path / "bad.txt"
    bad.write_text("ROMEO§", encoding="utf-8")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(checkpoint), "--text", str(bad))
    assert code == 2 and "'§'" in err
    good = tmp_path / "good.txt"
    good.write_text(TEXT, encoding="utf-8")
    code, _, err = run_cli(
        capsys, "eval", "--checkpoint", str(checkpoint), "--text", str(good), "--stride", "64"
    )
    assert code == 2 and "stride=64" in err


@pytest.mark.slow
def test_generate_script_runs_as_a_process(checkpoint):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/generate.py",
            "--checkpoint",
            str(checkpoint),
            "--prompt",
            "ROMEO:",
            "--max_new_tokens",
            "20",
            "--seed",
            "0",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ROMEO:") and len(proc.stdout) == len("ROMEO:") + 21
    bad = subprocess.run(
        [sys.executable, "scripts/generate.py", "--checkpoint", str(checkpoint), "--prompt", "§"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "'§'" in bad.stderr
