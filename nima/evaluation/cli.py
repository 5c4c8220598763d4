"""``nima eval`` / ``python scripts/evaluate.py``: score a checkpoint on its validation split, a
text, or downstream tasks.

By default the whole validation split of the dataset the model was trained on is scored with
non-overlapping windows of the model's context length; ``--stride`` switches to sliding windows,
``--max_tokens`` scores only the first N tokens, ``--text FILE`` scores any UTF-8 file instead.
``--task hellaswag|mc|completion`` measures accuracy instead (:mod:`nima.evaluation.tasks`), and
``--harness_tasks`` runs lm-evaluation-harness tasks (with the optional ``lm-eval`` package).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nima.cli import CommandParser
from nima.data import load_prepared
from nima.errors import ConfigError, DataError
from nima.evaluation.evaluate import evaluate_tokens
from nima.evaluation.tasks import TaskResult, evaluate_task, format_task_table, load_task
from nima.inference.loading import LoadedModel, add_loading_options, load_for_inference, set_threads
from nima.runtime.precision import inference_precision

EXAMPLES = """examples:
  nima eval --checkpoint experiments/checkpoints/best_model.pt
  nima eval --checkpoint CKPT --stride 128 --max_tokens 20000      (sliding windows, first 20k tokens)
  nima eval --checkpoint CKPT --text my_text.txt --json
  nima eval --checkpoint CKPT --task hellaswag --limit 500         (accuracy on the first 500 examples)
  nima eval --checkpoint CKPT --task mc --data my_quiz.jsonl        (your own multiple-choice task)
  nima eval --checkpoint CKPT --harness_tasks arc_easy,piqa         (needs: pip install lm-eval)
"""


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="nima eval",
        description="Evaluate a checkpoint: loss, perplexity, bits per token / character / byte; "
        "or accuracy on downstream tasks.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt) written by training")
    p.add_argument("--text", type=Path, help="score this UTF-8 text file instead of a prepared split")
    p.add_argument(
        "--split", choices=("val", "train"), default="val", help="prepared split to score (default val)"
    )
    p.add_argument(
        "--data",
        type=Path,
        help="prepared dataset folder (default: the one the model was trained on); with --task mc or "
        "completion: the task's jsonl file (with --task hellaswag: a local copy of its file)",
    )
    p.add_argument("--max_tokens", type=int, help="score only the first N tokens (default: all)")
    p.add_argument(
        "--context_length", type=int, help="window length in tokens (default: the model's max_seq_len)"
    )
    p.add_argument("--stride", type=int, help="step between windows (default: context length, no overlap)")
    p.add_argument(
        "--batch_size",
        type=int,
        default=32,
        help="windows (with --task: sequences) per forward pass (default 32)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument(
        "--task",
        help="measure accuracy on a task instead: hellaswag, mc (--data FILE of {context, choices, "
        "label}) or completion (--data FILE of {context, target})",
    )
    p.add_argument("--limit", type=int, help="with --task / --harness_tasks: only the first N examples")
    p.add_argument(
        "--harness_tasks",
        help="comma-separated lm-evaluation-harness tasks (e.g. arc_easy,piqa; needs pip install lm-eval)",
    )
    add_loading_options(p)
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="autocast precision; auto: bf16 on GPUs that support it, else fp32 (default: auto; "
        "fp32 with --task, as lm-evaluation-harness scores)",
    )
    return p


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"text file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {err.start})") from None
    except OSError as err:  # a folder, no permission ...
        raise DataError(f"cannot read text file {path}: {err.strerror or err}") from None
    if not text:
        raise DataError(f"{path} is empty: nothing to evaluate")
    return text


def _prepared_folder(loaded: LoadedModel, explicit: Path | None) -> Path:
    """The prepared dataset the split comes from: explicit, recorded, or where the tokenizer was found."""
    if explicit is not None:
        return explicit
    recorded = (loaded.info.get("data") or {}).get("prepared_path")
    candidates = [Path(recorded)] if recorded else []
    candidates.append(loaded.tokenizer_path.parent)
    for folder in candidates:
        if (folder / "meta.json").is_file():
            return folder
    raise DataError(
        f"cannot find the prepared dataset of {loaded.checkpoint_path} "
        f"(tried {', '.join(map(str, candidates))}); "
        "prepare it again with `nima prepare`, pass --data FOLDER, or score a file with --text FILE"
    )


def _split_tokens(folder: Path, split: str, loaded: LoadedModel) -> np.ndarray:
    prepared = load_prepared(folder)
    if prepared.tokenizer.identity()["sha256"] != loaded.tokenizer.identity()["sha256"]:
        raise DataError(
            f"{folder} was prepared with a different tokenizer than the model of {loaded.checkpoint_path}; "
            "pass the dataset the model was trained on with --data FOLDER"
        )
    return prepared.tokens(split, vocab_size=int(loaded.model.config.vocab_size))


def _check_options(args: argparse.Namespace) -> None:
    """The numeric options, before anything is loaded (the stride's upper bound, the context
    length, needs the model)."""
    for option in ("max_tokens", "context_length", "stride", "batch_size", "limit"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ConfigError(f"--{option} {value} must be at least 1")


def main(argv: list[str]) -> int:
    """Run ``nima eval``; returns the exit code (user errors raise NimaError)."""
    args = build_parser().parse_args(argv)
    _check_options(args)
    set_threads(args.threads)
    if args.task is not None or args.harness_tasks is not None:
        return _run_tasks(args)
    if args.limit is not None:
        raise ConfigError(
            "--limit goes with --task or --harness_tasks; to score fewer tokens use --max_tokens"
        )
    loaded = load_for_inference(
        args.checkpoint, tokenizer=args.tokenizer, device=args.device, data_dir=args.data_dir
    )
    source: dict[str, Any]
    if args.text is not None:
        tokens = np.asarray(loaded.tokenizer.encode(_read_text(args.text)), dtype=np.int64)
        source = {"text": str(args.text)}
    else:
        folder = _prepared_folder(loaded, args.data)
        tokens = _split_tokens(folder, args.split, loaded)
        source = {"prepared": str(folder), "split": args.split}
    source["tokens_available"] = int(len(tokens))
    start = time.perf_counter()
    result = evaluate_tokens(
        loaded.model,
        tokens,
        tokenizer=loaded.tokenizer,
        context_length=args.context_length,
        stride=args.stride,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        device=loaded.device,
        autocast_dtype=inference_precision(args.precision or "auto", loaded.device).dtype,
        progress=not args.json,
    )
    seconds = time.perf_counter() - start
    report = {
        "checkpoint": str(loaded.checkpoint_path),
        "step": loaded.info.get("step"),
        "tokenizer": loaded.tokenizer.identity(),
        "data": source,
        "seconds": round(seconds, 3),
        **result.to_dict(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    where = args.text if args.text is not None else f"{args.split} split of {source['prepared']}"
    step = f" (step {report['step']})" if report["step"] is not None else ""
    print(f"checkpoint      {loaded.checkpoint_path}{step}")
    print(f"data            {where} ({len(tokens):,} tokens)")
    print(result.format())
    print(f"time            {seconds:.1f} s ({result.tokens / max(seconds, 1e-9):,.0f} tokens/s)")
    return 0


# ---------------------------------------------------------------------------------- tasks


def _run_tasks(args: argparse.Namespace) -> int:
    """``--task`` and ``--harness_tasks``: accuracy tables (or JSON) instead of the loss report."""
    harness = _harness_runner(args.harness_tasks) if args.harness_tasks is not None else None
    for option in ("text", "stride", "max_tokens", "context_length"):
        if getattr(args, option) is not None:
            raise ConfigError(f"--{option} is for scoring text; leave it out with --task / --harness_tasks")
    if args.task is not None:
        task = load_task(args.task, data=args.data, data_dir=args.data_dir, limit=args.limit)
        loaded = load_for_inference(
            args.checkpoint, tokenizer=args.tokenizer, device=args.device, data_dir=args.data_dir
        )
        result = evaluate_task(
            loaded.model,
            loaded.tokenizer,
            task,
            batch_size=args.batch_size,
            device=loaded.device,
            progress=not args.json,
            autocast_dtype=inference_precision(args.precision or "fp32", loaded.device).dtype,
        )
        _report_task(args, loaded, result, task.source)
    if harness is not None:
        tasks, run_harness_tasks = harness
        try:
            text = run_harness_tasks(
                checkpoint=args.checkpoint,
                tasks=tasks,
                limit=args.limit,
                batch_size=args.batch_size,
                device=args.device,
            )
        except ImportError as err:  # the adapter may import lm-eval only when it runs
            raise ConfigError(
                f"--harness_tasks needs lm-evaluation-harness ({err}): pip install lm-eval"
            ) from None
        print(text)
    return 0


def _harness_runner(spec: str) -> tuple[list[str], Callable[..., str]]:
    """The task names of ``--harness_tasks`` and the adapter that runs them, checked before any
    model is loaded."""
    tasks = [name.strip() for name in spec.split(",") if name.strip()]
    if not tasks:
        raise ConfigError("--harness_tasks is empty; give task names such as arc_easy,piqa")
    try:
        from nima.evaluation.harness import run_harness_tasks  # lm-eval is an optional extra
    except ImportError as err:
        raise ConfigError(
            f"--harness_tasks needs lm-evaluation-harness ({err}): pip install lm-eval"
        ) from None
    return tasks, run_harness_tasks


def _report_task(args: argparse.Namespace, loaded: LoadedModel, result: TaskResult, source: str) -> None:
    step = loaded.info.get("step")
    if args.json:
        report = {"checkpoint": str(loaded.checkpoint_path), "step": step, "data": source, **result.to_dict()}
        print(json.dumps(report, indent=2))
        return
    print(f"checkpoint  {loaded.checkpoint_path}" + (f" (step {step})" if step is not None else ""))
    print(f"data        {source}")
    print(format_task_table([result]))
    if result.truncated:
        print(
            f"note: {result.truncated} request(s) were longer than the model's window of "
            f"{loaded.model.config.max_seq_len} tokens: their contexts lost their first tokens, as "
            "lm-evaluation-harness truncates"
        )
    print(f"time        {result.seconds:.1f} s")
