"""lm-evaluation-harness on a Nima checkpoint (``--model nima``), offline.

Parity: a small multiple-choice task in the harness's own YAML format, over a local jsonl, gives
the same accuracy and the same per-choice log-likelihoods through the ``nima`` adapter, through
the harness's ``hf`` backend on the checkpoint exported with ``nima export``, and through Nima's
built-in ``evaluate_task``. Then the requests one by one (empty and over-long contexts, rolling
windows, generation) against the ``hf`` backend, the options, the errors, ``run_harness_tasks``
and the harness's own command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets
import huggingface_hub
import lm_eval
import pytest
from inference_helpers import TEXT, save_checkpoint, train_tiny_model
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from nima.cli import main
from nima.data.tokenizer import CharTokenizer
from nima.errors import ConfigError, DataError
from nima.evaluation.harness import NimaLM, run_harness_tasks
from nima.evaluation.tasks import evaluate_task, load_task

TASK = "nima_tiny_mc"
WORDS = (
    "ROMEO: But soft, what light through yonder window breaks? JULIET: O Romeo, Romeo, wherefore art thou"
).split()
TOLERANCE = 1e-4


def _examples() -> list[dict]:
    """Contexts of 1 to 16 words (up to ~90 characters: longer than the tiny model's window of 32,
    so the harness's left truncation is exercised) and four 2-word choices, the right one at
    ``label``."""
    out = []
    for i in range(1, len(WORDS) - 2):
        right = " ".join(WORDS[i : i + 2])
        wrong = [
            " ".join(WORDS[(i + k) % (len(WORDS) - 1) : (i + k) % (len(WORDS) - 1) + 2]) for k in (3, 6, 9)
        ]
        label = i % 4
        choices = wrong[:label] + [right] + wrong[label:]
        out.append({"context": " ".join(WORDS[:i]), "choices": choices, "label": label})
    return out


def _task_yaml(name: str, data: Path, cache: Path) -> str:
    return f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
  cache_dir: {cache}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


@dataclass
class Setup:
    checkpoint: Path
    hf: Path
    tasks: Path
    data: Path
    model: object
    tokenizer: CharTokenizer


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness and Hugging Face libraries never try the network (the conftest blocks it too);
    the libraries read these variables when imported, so their constants are set as well."""
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """A tiny trained checkpoint with an end-of-text token, its export, and the task folder."""
    root = tmp_path_factory.mktemp("harness")
    examples = _examples()
    text = "".join(json.dumps(ex) + "\n" for ex in examples)
    tokenizer = CharTokenizer(TEXT + text, with_eot=True)
    model, tokenizer = train_tiny_model(steps=30, tokenizer=tokenizer)
    checkpoint = save_checkpoint(model, tokenizer, root / "run")
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(root / "hf")]) == 0
    tasks = root / "tasks"
    tasks.mkdir()
    data = tasks / "mc.jsonl"
    data.write_text(text)
    (tasks / f"{TASK}.yaml").write_text(_task_yaml(TASK, data, root / "datasets_cache"))
    return Setup(checkpoint, root / "hf", tasks, data, model, tokenizer)


def _harness(setup: Setup, model, **model_args) -> dict:
    manager = TaskManager(include_path=str(setup.tasks), include_defaults=False)
    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args or None,
        tasks=[TASK],
        task_manager=manager,
        device="cpu",
        batch_size=4,
        log_samples=True,
    )


def _choice_scores(results: dict) -> list[list[tuple[float, bool]]]:
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    return [[tuple(resp[0]) for resp in sample["resps"]] for sample in samples]


def _hf_lm(setup: Setup):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(setup.hf), device="cpu", dtype="float32", batch_size=4)


_HF_RESULTS: dict[Path, dict] = {}


@pytest.fixture
def hf_results(setup: Setup) -> dict:
    """The harness's ``hf`` backend on the exported folder, run once per module but inside a test,
    where the offline settings and the network guard hold."""
    if setup.hf not in _HF_RESULTS:
        _HF_RESULTS[setup.hf] = _harness(setup, "hf", pretrained=str(setup.hf), dtype="float32")
    return _HF_RESULTS[setup.hf]


def test_the_nima_and_hf_backends_give_the_same_scores(setup: Setup, hf_results: dict) -> None:
    ours = _harness(setup, NimaLM(setup.checkpoint, device="cpu", batch_size=5))
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"][TASK][metric] == hf_results["results"][TASK][metric]
    assert 0 < ours["results"][TASK]["acc,none"]  # a trained model: not all wrong
    nima_scores, hf_scores = _choice_scores(ours), _choice_scores(hf_results)
    assert len(nima_scores) == len(_examples()) and all(len(s) == 4 for s in nima_scores)
    for mine, theirs in zip(nima_scores, hf_scores, strict=True):
        assert [ll for ll, _ in mine] == pytest.approx([ll for ll, _ in theirs], abs=TOLERANCE)
        assert [greedy for _, greedy in mine] == [greedy for _, greedy in theirs]


def test_the_nima_model_by_name_with_model_args(setup: Setup, hf_results: dict) -> None:
    ours = _harness(setup, "nima", checkpoint=str(setup.checkpoint))
    assert ours["results"][TASK]["acc,none"] == hf_results["results"][TASK]["acc,none"]
    assert ours["config"]["checkpoint"] == str(setup.checkpoint)


def test_nimas_built_in_task_equals_the_harness(setup: Setup, hf_results: dict) -> None:
    result = evaluate_task(setup.model, setup.tokenizer, load_task("mc", data=setup.data), batch_size=7)
    harness = hf_results["results"][TASK]
    assert result.metrics["acc"] == harness["acc,none"]
    assert result.metrics["acc_norm"] == harness["acc_norm,none"]
    assert result.metrics["acc_stderr"] == pytest.approx(harness["acc_stderr,none"])
    for mine, theirs in zip(result.loglikelihoods, _choice_scores(hf_results), strict=True):
        assert mine == pytest.approx([ll for ll, _ in theirs], abs=TOLERANCE)


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihood_requests_match_the_hf_backend(setup: Setup) -> None:
    long = " ".join(WORDS) * 2  # far longer than the window of 32 characters
    pairs = [
        ("", "ROMEO:"),  # empty context: the end-of-text token
        ("ROMEO: ", "But soft"),  # the trailing space moves to the continuation
        (long, " Romeo"),  # left truncation
        ("JULIET:", long[:32]),  # a continuation of the whole window
        ("O", " Romeo, Romeo"),
    ]
    ours = NimaLM(setup.checkpoint, device="cpu", batch_size=2).loglikelihood(
        _requests("loglikelihood", pairs)
    )
    theirs = _hf_lm(setup).loglikelihood(_requests("loglikelihood", pairs))
    assert [ll for ll, _ in ours] == pytest.approx([ll for ll, _ in theirs], abs=TOLERANCE)
    assert [g for _, g in ours] == [g for _, g in theirs]
    in_memory = NimaLM.from_model(setup.model, setup.tokenizer, batch_size=3)
    again = in_memory.loglikelihood(_requests("loglikelihood", pairs))
    assert [ll for ll, _ in again] == pytest.approx([ll for ll, _ in ours], abs=TOLERANCE)


def test_rolling_loglikelihoods_match_the_hf_backend(setup: Setup) -> None:
    texts = [(TEXT[:100],), ("O",), (TEXT[:32],), (TEXT[:33],), (TEXT[5:250],)]  # 1 to 8 windows
    ours = NimaLM(setup.checkpoint, device="cpu", batch_size=3).loglikelihood_rolling(
        _requests("loglikelihood_rolling", texts)
    )
    theirs = _hf_lm(setup).loglikelihood_rolling(_requests("loglikelihood_rolling", texts))
    assert ours == pytest.approx(theirs, abs=TOLERANCE)


def test_greedy_generation_matches_the_hf_backend(setup: Setup) -> None:
    until = {"until": ["?"], "max_gen_toks": 12, "do_sample": False}
    args = [  # prompt + max_gen_toks within the window: the hf backend cuts longer prompts
        ("ROMEO:\nBut soft, wha", until),
        ("JULIET:\nO Romeo, ", until),
        ("ROMEO:\nBut", {"until": ["\n"], "max_gen_toks": 20}),
        ("O Romeo, Romeo", {"until": ["e", "w"], "max_gen_toks": 9}),
    ]
    theirs = _hf_lm(setup).generate_until(_requests("generate_until", args))
    for batch_size in (1, 4):
        lm = NimaLM(setup.checkpoint, device="cpu", batch_size=batch_size)
        assert lm.generate_until(_requests("generate_until", args)) == theirs
    assert not any(stop in text for text, (_, kw) in zip(theirs, args, strict=True) for stop in kw["until"])

    # An empty prompt starts from the end-of-text token (the hf backend cannot take one).
    (text,) = lm.generate_until(_requests("generate_until", [("", {"until": [], "max_gen_toks": 5})]))
    eos = setup.tokenizer.eos_token_id
    expected = setup.model.generate([eos], 5, temperature=0, eos_token_id=eos)[1:].tolist()
    assert text == setup.tokenizer.decode([t for t in expected if t != eos])


def test_sampled_generation_follows_the_seed_and_the_token_limit(setup: Setup) -> None:
    import torch

    lm = NimaLM(setup.checkpoint, device="cpu", batch_size=2)
    args = [
        ("ROMEO:", {"do_sample": True, "temperature": 1.5, "top_k": 10, "max_gen_toks": 40, "until": []})
    ] * 3

    def sample() -> list[str]:
        torch.manual_seed(0)
        return lm.generate_until(_requests("generate_until", args))

    first = sample()
    assert first == sample() and all(0 < len(text) <= 40 for text in first)
    assert len(set(first)) > 1  # rows of one batch sample apart


def test_options_and_their_errors(setup: Setup) -> None:
    lm = NimaLM.create_from_arg_string(
        f"checkpoint={setup.checkpoint},batch_size=3,max_gen_toks=7",
        {"device": "cpu", "max_batch_size": None},
    )
    assert (lm.batch_size, lm.max_gen_toks, lm.device.type) == (3, 7, "cpu")
    assert (
        NimaLM.create_from_arg_obj({"checkpoint": setup.checkpoint}, {"batch_size": "auto"}).batch_size == 32
    )
    with pytest.raises(ConfigError, match=r"^the nima model has no argument dtype; it takes checkpoint, "):
        NimaLM.create_from_arg_string(f"checkpoint={setup.checkpoint},dtype=float32")
    with pytest.raises(ConfigError, match="needs a checkpoint: --model_args checkpoint=PATH"):
        NimaLM.create_from_arg_string("")
    with pytest.raises(ConfigError, match="batch_size=0 must be a whole number of at least 1"):
        NimaLM(setup.checkpoint, batch_size=0)
    with pytest.raises(ConfigError, match="cannot use the generation setting.s. num_beams"):
        lm.generate_until(_requests("generate_until", [("ROMEO:", {"num_beams": 4})]))


def test_run_harness_tasks_prints_the_table_and_refuses_unknown_or_unreachable_tasks(setup: Setup) -> None:
    # Tasks named by their YAML files: the harness's own index is built once for this test and the next.
    yaml = str(setup.tasks / f"{TASK}.yaml")
    table = run_harness_tasks(checkpoint=setup.checkpoint, tasks=[yaml], limit=5, device="cpu")
    assert TASK in table and "acc_norm" in table and "|" in table

    with pytest.raises(ConfigError, match=r"^unknown harness task 'hellaswagg' \(did you mean hellaswag"):
        run_harness_tasks(checkpoint=setup.checkpoint, tasks=["hellaswagg"])
    with pytest.raises(ConfigError, match="include_path .*nowhere is not a folder of task YAML files"):
        run_harness_tasks(
            checkpoint=setup.checkpoint, tasks=[TASK], include_path=str(setup.tasks / "nowhere")
        )

    hub = setup.tasks / "hub" / "nima_needs_the_hub.yaml"
    hub.parent.mkdir(exist_ok=True)
    hub.write_text(
        _task_yaml("nima_needs_the_hub", setup.data, setup.tasks / "cache").replace(
            "dataset_path: json", "dataset_path: nima-tests/not-on-this-machine"
        )
    )
    with pytest.raises(
        DataError, match=r"^the harness could not fetch the dataset of \S+nima_needs_the_hub.yaml \("
    ) as err:
        run_harness_tasks(checkpoint=setup.checkpoint, tasks=[str(hub)])
    assert "\n" not in str(err.value)


def test_nima_eval_harness_tasks(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["eval", "--checkpoint", str(setup.checkpoint), "--device", "cpu", "--limit", "3"]
    assert main([*args, "--harness_tasks", str(setup.tasks / f"{TASK}.yaml")]) == 0
    assert TASK in capsys.readouterr().out
    assert main([*args, "--harness_tasks", "hellaswagg"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown harness task 'hellaswagg' (did you mean")


@pytest.mark.slow
def test_the_harness_command_line_with_model_nima(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nima.evaluation.lm_eval_cli import main as lm_eval_main

    argv = ["lm_eval", "run", "--model", "nima", "--model_args", f"checkpoint={setup.checkpoint}",
            "--tasks", TASK, "--include_path", str(setup.tasks), "--limit", "4"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert lm_eval_main() == 0
    out = capsys.readouterr().out
    assert "nima" in out and TASK in out and "acc_norm" in out


def test_nima_imports_without_lm_eval() -> None:
    code = (
        "import sys; sys.modules['lm_eval'] = None\n"
        "import nima.cli, nima.evaluation, nima.evaluation.cli, nima.evaluation.tasks\n"
        "from nima.errors import ConfigError\n"
        "try:\n    import nima.evaluation.harness\nexcept ConfigError as err:\n    print(err)\n"
        "sys.argv = ['lm_eval', '--model', 'nima']\n"
        "from nima.evaluation.lm_eval_cli import main\n"
        "print(main())\n"
        "print(nima.cli.main(['eval', '--checkpoint', 'none.pt', '--harness_tasks', 'hellaswag']))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    message = run.stdout.splitlines()[0]
    assert message.startswith("the lm-evaluation-harness is not installed (")
    assert message.endswith("pip install 'nima[harness]' (or lm-eval)")
    assert run.stdout.splitlines()[1:] == ["2", "2"]
    assert run.stderr.count("error: ") == 2 and "pip install" in run.stderr
