"""Downstream evaluation speed: Nima's built-in task scorer against lm-evaluation-harness.

    python benchmarks/eval_speed.py [--examples 400] [--rounds 3] [--batch_size 32] [--max_seq_len 256]
                                    [--threads N] [--device cpu] [--no_hf]

Builds in a temporary folder, from a seed:

- a multiple-choice task of ``--examples`` questions in HellaSwag's shape (Nima's ``mc`` jsonl:
  ``{"context", "choices", "label"}``, four choices), the contexts (100-200 characters) and
  endings (20-60 characters) cut from tiny Shakespeare, and the same task in the harness's YAML
  format over that file;
- a model of ``configs/cpu_quick.yaml``'s shape (3 layers, width 128, 4 heads, MLP 512) with a
  window of ``--max_seq_len`` (default 256, so that every question fits; cpu_quick's own 64
  truncates every one on the left, and then no two choices share a context) and random weights
  (speed does not depend on training), over tiny Shakespeare's characters plus end-of-text,
  saved as a checkpoint and exported with ``nima export``.

Then, ``--rounds`` times, in an order that alternates between rounds, one untimed warm-up round
first:

- built-in: ``evaluate_task(model, tokenizer, load_task("mc", data=FILE))`` (reading the file
  included);
- harness, nima: ``lm_eval.simple_evaluate`` of the YAML task with ``NimaLM`` (the ``nima`` model)
  on the checkpoint: the harness builds the task (reading the file through ``datasets``), makes
  the requests, the adapter scores them with the same scorer, the harness computes the metrics.
  The time inside the adapter's ``loglikelihood`` is reported too ("scoring inside the adapter");
- harness, hf (unless ``--no_hf``): the same with the harness's ``hf`` backend on the exported
  folder, for reference: how the harness scores this model without Nima.

Loading the models and the harness's index of its own tasks (several seconds, once per process)
are outside the timing. Prints examples per second (the median of the rounds) and the ratio
built-in / harness-with-nima, and checks that all give the same ``acc`` and ``acc_norm``.

Goal: the built-in scorer at least as fast as the harness through the adapter (ratio >= 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from common import find_text, machine, print_table, utc_now

SHAPE = {"d_model": 128, "n_heads": 4, "n_layers": 3, "d_ff": 512}
"""configs/cpu_quick.yaml's model (whose window, max_seq_len, is 64)."""
TASK = "nima_speed_mc"


def make_task(text: str, n: int, folder: Path, seed: int = 0) -> Path:
    """``n`` HellaSwag-shaped questions cut from ``text``, as an mc jsonl and a harness YAML task;
    returns the jsonl."""
    rng = random.Random(seed)

    def cut(low: int, high: int) -> str:
        length = rng.randint(low, high)
        start = rng.randrange(0, len(text) - length)
        return " ".join(text[start : start + length].split())  # one line, no leading space

    lines = []
    for _ in range(n):
        label = rng.randrange(4)
        lines.append(
            json.dumps({"context": cut(100, 200), "choices": [cut(20, 60) for _ in range(4)], "label": label})
        )
    data = folder / "mc.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / f"{TASK}.yaml").write_text(
        f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
  cache_dir: {folder / "datasets_cache"}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
""",
        encoding="utf-8",
    )
    return data


def save_model(text: str, folder: Path, max_seq_len: int) -> tuple[Path, Path]:
    """A random-weight model of SHAPE with a window of ``max_seq_len`` over ``text``'s characters,
    saved and exported; returns the checkpoint and the exported folder."""
    import torch

    from nima.checkpoint import atomic_save, make_checkpoint
    from nima.cli import main as nima
    from nima.data.tokenizer import CharTokenizer
    from nima.models import create_model

    torch.manual_seed(0)
    tokenizer = CharTokenizer(text, with_eot=True)
    model = create_model({**SHAPE, "max_seq_len": max_seq_len, "vocab_size": tokenizer.vocab_size})
    tok_path = tokenizer.save(folder / "tokenizer.json")
    ckpt = make_checkpoint(
        model.state_dict(), model.config.to_dict(), {**tokenizer.identity(), "path": str(tok_path)}, step=0
    )
    checkpoint = atomic_save(ckpt, folder / "checkpoints" / "model.pt")
    if nima(["export", "--checkpoint", str(checkpoint), "--out", str(folder / "hf")]) != 0:
        raise SystemExit("nima export failed")
    return checkpoint, folder / "hf"


BUILTIN, NIMA, HF = "built-in evaluate_task", "harness + nima adapter", "harness + hf backend"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=400, help="questions (4 choices each; default 400)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--batch_size", type=int, default=32, help="sequences per forward pass (default 32)")
    parser.add_argument(
        "--max_seq_len",
        type=int,
        default=256,
        help="the model's window (default 256: every question fits; 64, cpu_quick's, truncates them all)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda ...")
    parser.add_argument("--no_hf", action="store_true", help="leave out the harness's hf backend")
    parser.add_argument("--text", help="tiny Shakespeare's input.txt (default: the shared copy)")
    return parser.parse_args()


class TimedScoring:
    """Wraps an adapter's ``loglikelihood`` to add up the seconds spent in it."""

    def __init__(self, lm) -> None:
        self.seconds, self._score = 0.0, lm.loglikelihood
        lm.loglikelihood = self

    def __call__(self, requests, disable_tqdm: bool = False):
        start = time.perf_counter()
        try:
            return self._score(requests, disable_tqdm=disable_tqdm)
        finally:
            self.seconds += time.perf_counter() - start


def measure(runs: dict, rounds: int, scoring: TimedScoring) -> tuple[dict, dict, list[float]]:
    """Seconds of each run per round (after an untimed warm-up round: caches, the datasets arrow
    file), alternating the order; the metrics each run gave, and the adapter's scoring seconds."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    metrics: dict[str, dict] = {}
    scoring_times = []
    for round_ in range(rounds + 1):
        for name in list(runs) if round_ % 2 == 0 else list(reversed(runs)):
            scoring.seconds = 0.0
            start = time.perf_counter()
            metrics[name] = runs[name]()
            if round_:
                times[name].append(time.perf_counter() - start)
                if name == NIMA:
                    scoring_times.append(scoring.seconds)
    return times, metrics, scoring_times


def main() -> None:
    args = parse_args()
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    logging.disable(logging.WARNING)  # the harness's notices on every run; errors still show

    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    from nima.evaluation.harness import NimaLM
    from nima.evaluation.tasks import evaluate_task, load_task

    if args.threads:
        torch.set_num_threads(args.threads)
    text = find_text(args.text).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="nima-eval-speed-") as tmp:
        folder = Path(tmp)
        data = make_task(text, args.examples, folder)
        checkpoint, hf_folder = save_model(text, folder, args.max_seq_len)
        nima_lm = NimaLM(checkpoint, device=args.device, batch_size=args.batch_size)
        scoring = TimedScoring(nima_lm)
        manager = TaskManager(include_path=str(folder), include_defaults=False)

        def builtin() -> dict:
            task = load_task("mc", data=data)
            result = evaluate_task(nima_lm.model, nima_lm.tokenizer, task, batch_size=args.batch_size)
            return {"acc": result.metrics["acc"], "acc_norm": result.metrics["acc_norm"]}

        def harness(lm) -> dict:
            out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=manager, log_samples=False)
            return {
                "acc": out["results"][TASK]["acc,none"],
                "acc_norm": out["results"][TASK]["acc_norm,none"],
            }

        runs = {BUILTIN: builtin, NIMA: lambda: harness(nima_lm)}
        if not args.no_hf:
            from lm_eval.models.huggingface import HFLM

            hf_lm = HFLM(
                pretrained=str(hf_folder), device=args.device, dtype="float32", batch_size=args.batch_size
            )
            runs[HF] = lambda: harness(hf_lm)
        times, metrics, scoring_times = measure(runs, args.rounds, scoring)

    print(f"{utc_now()}; {machine()}")
    shape = SHAPE | {"max_seq_len": args.max_seq_len}
    print(
        f"{args.examples} questions x 4 choices, model {shape} (random weights, vocab "
        f"{nima_lm.tokenizer.vocab_size}), batch {args.batch_size}, device {args.device}, "
        f"{args.rounds} rounds, lm-eval {lm_eval.__version__}"
    )
    rate = {name: args.examples / statistics.median(t) for name, t in times.items()}
    rows = [
        [name, f"{statistics.median(t):.2f}", f"{min(t):.2f}-{max(t):.2f}", f"{rate[name]:.0f}",
         f"{metrics[name]['acc']:.4f}", f"{metrics[name]['acc_norm']:.4f}"]
        for name, t in times.items()
    ]  # fmt: skip
    print_table(["run", "median s", "range s", "examples/s", "acc", "acc_norm"], rows)
    print(f"\nscoring inside the adapter (median): {statistics.median(scoring_times):.2f} s")
    ratio = rate[BUILTIN] / rate[NIMA]
    verdict = "met" if ratio >= 1 else "not met"
    print(f"built-in / harness with the nima adapter: {ratio:.2f}x (goal >= 1: {verdict})")
    if HF in rate:
        print(f"built-in / harness with its hf backend: {rate[BUILTIN] / rate[HF]:.2f}x")
    same = len({(m["acc"], m["acc_norm"]) for m in metrics.values()}) == 1
    print(f"the same acc and acc_norm in every run: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
