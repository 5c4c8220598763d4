"""Downstream tasks: HellaSwag's preprocessing, accuracy and its standard error, batched
log-likelihoods against one request at a time, left truncation, bad task files on the command line,
and ``training.eval_tasks`` in a tiny run's metrics and report."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import torch
from inference_helpers import save_checkpoint
from tiny import model_config
from training_helpers import small_loader, tiny_model, training_config

from nima.cli import main
from nima.config import TrainingConfig
from nima.data.tokenizer import BPETokenizer, ByteTokenizer
from nima.errors import ConfigError, DataError
from nima.evaluation import task_data
from nima.evaluation.choice_scoring import Encoded, encode_pair, encode_requests, score_encoded
from nima.evaluation.tasks import (
    MCExample,
    Task,
    evaluate_task,
    hellaswag_preprocess,
    load_task,
    loglikelihoods,
    mean_stderr,
    task_result,
)
from nima.models import create_model
from nima.training import Trainer

HELLASWAG_LINES = [
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he",
        "split": "val",
        "split_type": "indomain",
        "label": 3,
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "source_id": "activitynet~v_-JhWjGDPHMY",
    },
    {
        "ind": 92,
        "activity_label": "Home and Garden",
        "ctx_a": "[header] How to clean a roof [title] Use a hose. [step] Spray the roof.",
        "ctx_b": "then THE water",
        "ctx": "",
        "split": "val",
        "split_type": "zeroshot",
        "label": "0",
        "endings": [
            "runs off [substeps]   the   edge.",
            "[title] Dry it. [step] Wait.",
            "is gone.",
            "turns blue.",
        ],
        "source_id": "wikihow~1",
    },
]
QUIZ = [
    {"context": "The sky is", "choices": ["blue.", "green."], "label": 0},
    {"context": "Two and two make", "choices": ["four.", "five.", "a fish."], "label": 2},
    {"context": "Water is", "choices": ["wet.", "dry."], "label": 1},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def byte_model():
    """The tests' tiny GPT over bytes, untrained (weights drawn larger, so scores differ)."""
    torch.manual_seed(0)
    model = create_model(model_config(ByteTokenizer().vocab_size, init_std=0.2))
    return model.eval(), ByteTokenizer()


# ---------------------------------------------------------------------------------- HellaSwag


def test_hellaswag_preprocessing_follows_the_harness(tmp_path: Path) -> None:
    task = load_task("hellaswag", data=write_jsonl(tmp_path / "hs.jsonl", HELLASWAG_LINES))
    first, second = task.examples
    assert task.name == "hellaswag" and task.kind == "mc" and len(task.examples) == 2
    assert first.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert first.choices == HELLASWAG_LINES[0]["endings"] and first.label == 3
    # ctx_b capitalized (the rest lowered); " [title]" -> ". "; other [..] dropped; "  " -> " " once
    assert (
        second.context == "Home and Garden: How to clean a roof. Use a hose. Spray the roof. Then the water"
    )
    # stripped before the markers go: a marker at the start leaves its space; 4 and 3 spaces become 2
    assert second.choices == ["runs off  the  edge.", " Dry it. Wait.", "is gone.", "turns blue."]
    assert second.label == 0
    assert hellaswag_preprocess("  a [title] b  ") == "a. b"
    assert load_task("hellaswag", data=tmp_path / "hs.jsonl", limit=1).examples == [first]


def test_hellaswag_comes_from_the_offline_mirror_checked_by_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "hellaswag").mkdir(parents=True)
    small = write_jsonl(mirror / "hellaswag" / "hellaswag_val.jsonl", HELLASWAG_LINES)
    digest = hashlib.sha256(small.read_bytes()).hexdigest()
    monkeypatch.setattr(task_data, "HELLASWAG", task_data.HELLASWAG.__class__(
        **{**task_data.HELLASWAG.__dict__, "sha256": digest}
    ))  # fmt: skip
    monkeypatch.setenv("NIMA_DATA_MIRROR", str(mirror))
    task = load_task("hellaswag", data_dir=tmp_path / "data", limit=1)
    assert len(task.examples) == 1
    assert (tmp_path / "data" / "hellaswag" / "hellaswag_val.jsonl").read_bytes() == small.read_bytes()


def test_hellaswag_without_network_or_mirror_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="NIMA_DATA_MIRROR") as err:
        load_task("hellaswag", data_dir=tmp_path)
    assert "\n" not in str(err.value) and "hellaswag_val.jsonl" in str(err.value)


# ---------------------------------------------------------------------------------- metrics


def test_acc_acc_norm_and_stderr_by_hand() -> None:
    task = Task(
        "mc",
        "mc",
        [
            MCExample("q1", ["aa", "bbbbbbbb"], 1),  # -4 vs -6: acc picks 0; per char -2 vs -0.75 picks 1
            MCExample("q2", ["a", "b", "c"], 0),  # -1, -1, -3: a tie goes to the first
            MCExample("q3", ["xx", "y"], 0),  # -2 vs -3: both pick 0
        ],
    )
    answers = [
        (-4.0, False),
        (-6.0, False),
        (-1.0, True),
        (-1.0, False),
        (-3.0, False),
        (-2.0, True),
        (-3.0, False),
    ]
    result = task_result(task, answers)
    hits, hits_norm = [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]
    assert result.metrics["acc"] == pytest.approx(2 / 3)
    assert result.metrics["acc_norm"] == pytest.approx(1.0)
    # the harness's mean_stderr: sample standard deviation / sqrt(n)
    assert result.metrics["acc_stderr"] == pytest.approx(
        math.sqrt((2 * (1 / 3) ** 2 + (2 / 3) ** 2) / 2) / math.sqrt(3)
    )
    assert mean_stderr(hits) == result.metrics["acc_stderr"]
    assert mean_stderr(hits_norm) == result.metrics["acc_norm_stderr"] == 0.0
    assert result.loglikelihoods == [[-4.0, -6.0], [-1.0, -1.0, -3.0], [-2.0, -3.0]]
    assert math.isnan(mean_stderr([1.0]))


def test_evaluate_task_agrees_with_its_own_loglikelihoods(byte_model, tmp_path: Path) -> None:
    model, tok = byte_model
    task = load_task("mc", data=write_jsonl(tmp_path / "quiz.jsonl", QUIZ))
    result = evaluate_task(model, tok, task, batch_size=4)
    lls = result.loglikelihoods
    expected = loglikelihoods(model, tok, [(ex.context, " " + c) for ex in task.examples for c in ex.choices])
    assert [ll for row in lls for ll in row] == pytest.approx([ll for ll, _ in expected], abs=1e-4)
    acc = [
        float(max(range(len(row)), key=row.__getitem__) == ex.label)
        for row, ex in zip(lls, task.examples, strict=True)
    ]
    norm = [
        float(max(range(len(row)), key=lambda i: row[i] / len(ex.choices[i])) == ex.label)
        for row, ex in zip(lls, task.examples, strict=True)
    ]
    assert result.n == 3 and result.metrics["acc"] == sum(acc) / 3
    assert result.metrics["acc_norm"] == sum(norm) / 3
    completion = load_task(
        "completion", data=write_jsonl(tmp_path / "c.jsonl", [{"context": "ab", "target": "c"}])
    )
    scored = evaluate_task(model, tok, completion)
    ((ll, greedy),) = loglikelihoods(model, tok, [("ab", "c")])
    assert scored.loglikelihoods == [[pytest.approx(ll, abs=1e-5), float(greedy)]]
    assert scored.metrics["acc"] == float(greedy) and scored.metrics["perplexity"] == pytest.approx(
        math.exp(-ll)
    )


# ---------------------------------------------------------------------------------- log-likelihoods


def one_at_a_time(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """The harness's computation for one request, as plainly as it can be written."""
    ctx, cont = encode_pair(tok, context, continuation)
    window = model.config.max_seq_len
    tokens = (ctx + cont)[-(window + 1) :]
    with torch.no_grad():
        logprobs = model(torch.tensor([tokens[:-1]])).logits.float().log_softmax(-1)[0]
    positions = range(len(tokens) - 1 - len(cont), len(tokens) - 1)
    total = sum(float(logprobs[p, t]) for p, t in zip(positions, cont, strict=True))
    return total, all(int(logprobs[p].argmax()) == t for p, t in zip(positions, cont, strict=True))


REQUESTS = [
    ("The cat sat on", " the mat"),
    ("The cat sat on", " a hat"),  # same context: one prefix for both
    ("The cat sat on", " a"),  # one-token continuation: read from the prefix alone
    ("The cat sat on", " a"),  # a duplicate
    ("Hello", "!"),
    ("Trailing space ", "moves"),  # the space goes to the continuation
    ("", "no context"),  # the end-of-text token stands for it
    ("x" * 50, " longer than the window"),  # truncated on the left
    ("yy", "z" * 32),  # the continuation fills the whole window; the context keeps one token
]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("share_context", [True, False])
def test_batched_loglikelihoods_equal_one_at_a_time(arch: str, batch_size: int, share_context: bool) -> None:
    torch.manual_seed(1)
    tok = ByteTokenizer()
    extra = {"n_kv_heads": 2} if arch == "llama" else {}
    model = create_model(model_config(tok.vocab_size, arch=arch, init_std=0.2, **extra)).eval()
    encoded = encode_requests(tok, REQUESTS)
    scores = score_encoded(model, encoded, batch_size=batch_size, share_context=share_context)
    expected = [one_at_a_time(model, tok, c, k) for c, k in REQUESTS]
    torch.testing.assert_close(
        torch.tensor([ll for ll, _ in scores.answers], dtype=torch.float64),
        torch.tensor([ll for ll, _ in expected], dtype=torch.float64),
        rtol=1e-5,
        atol=1e-4,
    )
    assert [g for _, g in scores.answers] == [g for _, g in expected]
    assert scores.truncated == 2  # the long context, and "yy" + 32 z's (34 tokens for a window of 32)


def test_greedy_continuations_are_recognised(byte_model) -> None:
    model, tok = byte_model
    context = tok.encode("abc")
    greedy: list[int] = []
    for _ in range(3):  # the model's own most likely next three tokens
        with torch.no_grad():
            greedy.append(int(model(torch.tensor([context + greedy])).logits[0, -1].argmax()))
    other = greedy[:-1] + [(greedy[-1] + 1) % tok.vocab_size]
    requests = [Encoded(tuple(context), tuple(greedy)), Encoded(tuple(context), tuple(other))]
    for share_context in (True, False):
        (_, is_greedy), (_, not_greedy) = score_encoded(model, requests, share_context=share_context).answers
        assert is_greedy and not not_greedy


def test_left_truncation_keeps_the_last_window_plus_one_tokens(byte_model) -> None:
    model, tok = byte_model
    long_context = "".join(chr(97 + i % 26) for i in range(100))
    ((truncated, _),) = loglikelihoods(model, tok, [(long_context, " end")])
    kept = long_context[-(model.config.max_seq_len + 1 - len(" end")) :]
    ((short, _),) = loglikelihoods(model, tok, [(kept, " end")])
    assert truncated == pytest.approx(short, abs=1e-5)


def test_encoding_follows_the_harness_split() -> None:
    tok = BPETokenizer.train(["the cat sat on the mat and the hat " * 50], vocab_size=300)
    context_ids, continuation_ids = encode_pair(tok, "the cat sat on ", "the mat")
    assert context_ids == tok.encode("the cat sat on")  # its trailing space moved over
    whole = tok.encode("the cat sat on the mat")
    assert continuation_ids == whole[len(context_ids) :]
    byte = ByteTokenizer()
    assert encode_pair(byte, "", "hi") == ([byte.eos_token_id], list(b"hi"))
    with pytest.raises(DataError, match="no end-of-text"):
        encode_pair(ByteTokenizer(with_eot=False), "", "hi")
    with pytest.raises(DataError, match="request 1: the continuation ''"):
        encode_requests(byte, [("a", "b"), ("a", "")])


# ---------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, byte_model) -> Path:
    model, tok = byte_model
    return save_checkpoint(model, tok, tmp_path_factory.mktemp("run"))


def run_eval(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_prints_a_table_and_json(checkpoint: Path, tmp_path: Path, byte_model, capsys) -> None:
    quiz = write_jsonl(tmp_path / "quiz.jsonl", QUIZ)
    code, out, _ = run_eval(capsys, "--checkpoint", str(checkpoint), "--task", "mc", "--data", str(quiz))
    assert code == 0
    assert "task  n  acc" in out and "acc_norm" in out
    code, out, _ = run_eval(
        capsys, "--checkpoint", str(checkpoint), "--task", "mc", "--data", str(quiz), "--limit", "2", "--json"
    )
    report = json.loads(out)
    expected = evaluate_task(*byte_model, load_task("mc", data=quiz, limit=2))
    assert code == 0 and report["n"] == 2 and report["metrics"]["acc"] == expected.metrics["acc"]


def test_a_context_longer_than_the_window_is_cut_and_said_so(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    long = write_jsonl(tmp_path / "long.jsonl", [{"context": "a" * 100, "choices": ["b", "c"], "label": 0}])
    code, out, _ = run_eval(capsys, "--checkpoint", str(checkpoint), "--task", "mc", "--data", str(long))
    assert code == 0 and "note: 2 request(s) were longer than the model's window of 32 tokens" in out


BAD_LINES = [
    ({"context": "a", "choices": ["b", "c"]}, "missing field 'label'"),
    ({"context": "a", "choices": ["b", "c"], "label": 2}, "label 2 is out of range for 2 choices"),
    ({"context": "a", "choices": ["b", ""], "label": 0}, "choice 1 is empty"),
    ({"context": "a", "choices": ["b"], "label": 0}, "at least 2 strings"),
    ({"context": "a", "choices": ["b", "c"], "label": True}, "label must be the index"),
    ('{"context": "a", ', "not valid JSON"),
    (["not", "an", "object"], "expected a JSON object"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_a_bad_task_file_is_one_line_and_exit_code_2(line, message, checkpoint, tmp_path, capsys) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [QUIZ[0], line])
    code, _, err = run_eval(capsys, "--checkpoint", str(checkpoint), "--task", "mc", "--data", str(bad))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and f"{bad}:2" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "helaswag"], "unknown task 'helaswag' (did you mean hellaswag?)"),
        (["--task", "mc"], "task mc needs a data file"),
        (["--task", "mc", "--data", "missing.jsonl"], "task file not found: missing.jsonl"),
        (["--task", "completion", "--data", "{quiz}"], "missing field 'target'"),
        (["--task", "mc", "--data", "{long}"], "longer than the model's window of 32"),
        (["--task", "mc", "--data", "{quiz}", "--limit", "0"], "--limit 0 must be at least 1"),
        (["--limit", "5"], "--limit goes with --task"),
    ],
)
def test_bad_task_options_are_one_line_and_exit_code_2(args, message, checkpoint, tmp_path, capsys) -> None:
    quiz = write_jsonl(tmp_path / "quiz.jsonl", QUIZ)
    long = write_jsonl(tmp_path / "long.jsonl", [{"context": "a", "choices": ["b" * 40, "c"], "label": 0}])
    args = [a.format(quiz=quiz, long=long) for a in args]
    code, _, err = run_eval(capsys, "--checkpoint", str(checkpoint), *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err


# ---------------------------------------------------------------------------------- during training


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([{"task": "mc"}], "training.eval_tasks[0]: task mc needs data"),
        ([{"task": "hellaswag", "limt": 5}], "unknown key 'limt' (did you mean limit?)"),
        ([{"task": "hellaswag", "limit": 0}], "training.eval_tasks[0].limit must be"),
        (["hellaswag", {"task": "hellaswag"}], "a second task named 'hellaswag'"),
        ("hellaswag", "must be a list"),
    ],
)
def test_bad_eval_tasks_are_config_errors(tasks, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainingConfig(eval_tasks=tasks)


def test_a_bad_eval_task_stops_nima_train_before_anything_runs(capsys) -> None:
    assert main(["train", "--quick_test", "--training.eval_tasks=[{task: helaswag}]"]) == 2
    err = capsys.readouterr().err
    assert (
        "training.eval_tasks[0].task must be one of hellaswag, mc, completion" in err and err.count("\n") == 1
    )


SHAKESPEARE_QUIZ = [
    {"context": "ROMEO:\nWherefore art thou", "choices": ["Romeo?", "Juliet?"], "label": 0},
    {"context": "First Citizen:\nBefore we proceed", "choices": ["any further", "zzz"], "label": 0},
]


def test_eval_tasks_are_logged_at_every_evaluation(prepared, tmp_path: Path) -> None:
    quiz = write_jsonl(tmp_path / "quiz.jsonl", SHAKESPEARE_QUIZ)
    config = training_config(
        tmp_path,
        "fp32",
        max_steps=4,
        eval_every=2,
        batch_size=4,
        eval_tasks=[{"task": "mc", "data": str(quiz)}],
    )
    train = small_loader(prepared, batch_size=4, tokens=2000)
    val = small_loader(prepared, batch_size=4, tokens=300, shuffle=False, split="val")
    Trainer(tiny_model(prepared), config, train, val, tokenizer=prepared.tokenizer).train()
    records = [
        json.loads(line) for line in (tmp_path / "out" / "logs" / "metrics.jsonl").read_text().splitlines()
    ]
    evaluated = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evaluated] == [2, 4]
    for record in evaluated:
        assert record["eval/quiz_acc"] in (0.0, 0.5, 1.0) and record["eval/quiz_acc_norm"] in (0.0, 0.5, 1.0)
    assert not any("eval/quiz_acc" in r for r in records if "val_loss" not in r)
    assert "| eval/quiz_acc_norm |" in (tmp_path / "out" / "report.md").read_text()


def test_eval_tasks_a_char_tokenizer_cannot_encode_stop_the_run_before_training(prepared, tmp_path) -> None:
    quiz = write_jsonl(tmp_path / "quiz.jsonl", [{"context": "1 + 1 =", "choices": ["2", "{3}"], "label": 0}])
    config = training_config(
        tmp_path, "fp32", max_steps=2, batch_size=4, eval_tasks=[{"task": "mc", "data": str(quiz)}]
    )
    train = small_loader(prepared, batch_size=4, tokens=2000)
    val = small_loader(prepared, batch_size=4, tokens=300, shuffle=False, split="val")
    with pytest.raises(
        DataError, match=r"training.eval_tasks\[0\] \(quiz\): example 1: char tokenizer has no id"
    ):
        Trainer(tiny_model(prepared), config, train, val, tokenizer=prepared.tokenizer)


def test_eval_tasks_need_a_validation_loader(prepared, tmp_path: Path) -> None:
    quiz = write_jsonl(tmp_path / "quiz.jsonl", SHAKESPEARE_QUIZ)
    config = training_config(
        tmp_path, "fp32", max_steps=2, batch_size=4, eval_tasks=[{"task": "mc", "data": str(quiz)}]
    )
    train = small_loader(prepared, batch_size=4, tokens=2000)
    with pytest.raises(ConfigError, match="need a validation loader"):
        Trainer(tiny_model(prepared), config, train, None, tokenizer=prepared.tokenizer)
    with pytest.raises(ConfigError, match="needs the run's tokenizer"):
        Trainer(tiny_model(prepared), config, train, train)
