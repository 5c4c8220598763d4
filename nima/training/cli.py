"""``nima train`` / ``python scripts/train.py``: train a model from a YAML config.

Reads the config (``--config``, or the built-in quick recipe with ``--quick_test``), applies
``--section.key=value`` overrides, prepares the data when it is not prepared yet, builds the
model, loaders and :class:`~nima.training.Trainer`, optionally resumes (``--checkpoint``), trains,
and prints a summary (and, for ``--quick_test``, a short sample).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import sysconfig
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

from nima.checkpoint import newest_checkpoint
from nima.cli import CommandParser
from nima.config import RunConfig, known_keys, parse_overrides
from nima.errors import ConfigError, DataError

# The quick recipe: a small char-level model that reaches a validation loss below 2.3 on tiny
# Shakespeare within about a minute on a 2-core CPU (configs/cpu_quick.yaml is the same).
QUICK_TEST: dict[str, dict[str, Any]] = {
    "model": {
        "vocab_size": 65,
        "d_model": 128,
        "n_heads": 4,
        "n_layers": 3,
        "d_ff": 512,
        "max_seq_len": 64,
        "dropout": 0.0,
    },
    "training": {
        "max_steps": 500,
        "batch_size": 16,
        "learning_rate": 2e-3,
        "warmup_steps": 30,
        "min_lr": 2e-4,
        "weight_decay": 0.1,
        "betas": [0.9, 0.99],
        "gradient_clip": 1.0,
        "eval_every": 250,
        "eval_batches": 25,
        "save_every": 0,
        "log_every": 10,
        "output_dir": "experiments/quick_test",
    },
    "data": {"dataset": "tiny_shakespeare", "tokenizer": "char"},
}

FALLBACK_NAME = "python_stdlib"
FALLBACK_BYTES = 1_200_000


def build_parser() -> argparse.ArgumentParser:
    keys = known_keys()
    lines = [
        "overrides (any config field, typed like the field):",
        "  --section.key=value  or  --section.key value",
        "  e.g. --training.max_steps=20 --model.n_layers=2 --training.learning_rate 1e-3",
        "",
    ]
    for section, names in keys.items():
        lines += textwrap.wrap(
            ", ".join(names),
            width=100,
            initial_indent=f"  {section}: ",
            subsequent_indent=" " * (len(section) + 4),
        )
    lines += [
        "",
        "aliases: training.save_steps = training.save_every, training.eval_steps = training.eval_every",
    ]
    parser = CommandParser(
        prog="nima train",
        description="Train a GPT-style model. Data named in the config (data.dataset, data.tokenizer) is "
        "prepared first if needed; checkpoints go to <training.output_dir>/checkpoints and metrics to "
        "<training.output_dir>/logs/metrics.jsonl.",
        epilog="\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        help="YAML config with model:, training: and data: sections (e.g. configs/base_model.yaml)",
    )
    parser.add_argument(
        "--quick_test",
        action="store_true",
        help="train the small built-in CPU recipe (about a minute) and print a sample",
    )
    parser.add_argument(
        "--checkpoint",
        help="resume from this checkpoint (model, optimizer, schedule, data position and RNG state)",
    )
    parser.add_argument(
        "--init_from",
        help="start from this checkpoint's weights and model config (fine-tuning, e.g. a model from "
        "nima import); the data must use its tokenizer (data.tokenizer: path of its tokenizer.json)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="resume from the newest step_N.pt / epoch_N.pt in <training.output_dir>/checkpoints if "
        "there is one, else start afresh: the same command restarts a preempted or killed job",
    )
    return parser


def load_run_config(config_path: str | None, quick_test: bool, overrides: list[str]) -> RunConfig:
    """The run config from a file or the quick recipe, with overrides applied and validated."""
    if quick_test and config_path:
        raise ConfigError(
            "give either --config or --quick_test (the quick test has its own small recipe; "
            "use overrides to change it)"
        )
    if quick_test:
        return RunConfig.from_dict(QUICK_TEST, source="--quick_test", overrides=overrides)
    if not config_path:
        raise ConfigError("no config given: use --config configs/base_model.yaml (or --quick_test)")
    return RunConfig.from_yaml(config_path, overrides=overrides)


def _stdlib_corpus(data_dir: Path) -> Path:
    """A text file made of Python standard-library sources: a corpus every machine has."""
    target = data_dir / FALLBACK_NAME / f"{FALLBACK_NAME}.txt"
    if target.is_file() and target.stat().st_size > 0:
        return target
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        size += len(text)
        if size >= FALLBACK_BYTES:
            break
    if not parts:
        raise DataError(f"no Python standard-library sources found under {stdlib} for the fallback corpus")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text("\n".join(parts)[:FALLBACK_BYTES], encoding="utf-8")
    tmp.replace(target)
    return target


def prepare_data(run: RunConfig, allow_fallback: bool, say=print):
    """Prepare (or reuse) the run's data; with ``allow_fallback``, use the stdlib corpus if tiny
    Shakespeare cannot be had. Returns ``PreparedData``."""
    from nima.data import default_data_dir, prepare

    data = run.data
    vocab_size = run.model.vocab_size if data.tokenizer == "bpe" else None
    kwargs = {
        "data_dir": data.data_dir,
        "encoding": data.encoding,
        "text_field": data.text_field,
        "val_fraction": data.val_fraction,
    }
    try:
        return prepare(data.dataset, data.tokenizer, vocab_size=vocab_size, **kwargs)
    except DataError as err:
        if not (allow_fallback and data.dataset == "tiny_shakespeare"):
            raise
        say(f"note: tiny Shakespeare is not available ({err})")
        root = Path(data.data_dir) if data.data_dir else default_data_dir()
        corpus = _stdlib_corpus(root)
        say(
            f"note: FALLBACK CORPUS: training on Python standard-library source text ({corpus}) instead "
            "of tiny Shakespeare; losses and samples are not comparable"
        )
        return prepare(str(corpus), data.tokenizer, vocab_size=vocab_size, **kwargs)


def prepare_data_once_per_node(run: RunConfig, ctx: Any, allow_fallback: bool, say=print):
    """:func:`prepare_data` under torchrun without duplicated work: rank 0 prepares first; then the
    first process of every other node (which reuses rank 0's result on a shared file system, and
    prepares its own copy otherwise); then everyone else reuses their node's."""
    from nima.distributed import barrier

    prepared = None
    for turn in (ctx.is_main, ctx.local_rank == 0 and not ctx.is_main, ctx.local_rank != 0):
        if turn:
            prepared = prepare_data(run, allow_fallback=allow_fallback, say=say)
        barrier()
    return prepared


def model_config_from(run: RunConfig, init_from: str | Path, tokenizer: Any, say=print) -> RunConfig:
    """The run with the model config of checkpoint ``init_from`` (the run's own dropout and
    gradient checkpointing kept: they change training, not the weights)."""
    from nima.checkpoint import load_checkpoint_file
    from nima.models import ModelConfig

    saved = load_checkpoint_file(init_from, mmap=True).get("model_config")  # the Trainer reads the weights
    if not isinstance(saved, dict):
        raise ConfigError(f"--init_from {init_from} has no model_config to start from")
    model = ModelConfig.from_dict(
        {**saved, "dropout": run.model.dropout, "gradient_checkpointing": run.model.gradient_checkpointing}
    )
    if tokenizer.vocab_size > model.vocab_size:
        raise ConfigError(
            f"the data's tokenizer has {tokenizer.vocab_size} ids but the model of {init_from} only "
            f"{model.vocab_size}; prepare the data with its tokenizer (data.tokenizer: <its tokenizer.json>)"
        )
    say(f"fine-tuning from {init_from}: model config taken from it (the config's model: section is ignored)")
    return run.replace(model=model)


def fit_vocab_size(run: RunConfig, tokenizer: Any, say=print) -> RunConfig:
    """Make model.vocab_size match the tokenizer (with one warning when it did not)."""
    if run.model.vocab_size == tokenizer.vocab_size:
        return run
    if run.data.tokenizer == "bpe" and tokenizer.vocab_size < run.model.vocab_size:
        why = "the corpus gave fewer BPE merges than asked"
    else:
        why = f"the {run.data.tokenizer} vocabulary comes from the tokenizer"
    say(f"warning: model.vocab_size={run.model.vocab_size} changed to {tokenizer.vocab_size} ({why})")
    return run.replace(model=dataclasses.replace(run.model, vocab_size=tokenizer.vocab_size))


def build_loaders(run: RunConfig, prepared: Any, rank: int, world_size: int):
    """Train and validation loaders over windows of model.max_seq_len tokens, sharded by rank."""
    from nima.data import DataCollator, TokenWindowDataset, create_dataloader

    seed = run.data.seed if run.data.seed is not None else run.training.seed
    context = run.model.max_seq_len
    train_ds = TokenWindowDataset.from_prepared(prepared, "train", context, seed=seed)
    val_ds = TokenWindowDataset.from_prepared(prepared, "val", context, seed=seed)
    if len(train_ds) == 0:
        raise DataError(
            f"the training split of {prepared.path} is shorter than one window of "
            f"model.max_seq_len={context} tokens; use a smaller max_seq_len or more text"
        )
    collator = DataCollator(prepared.tokenizer)
    workers = run.data.num_workers or run.training.num_workers
    common = {
        "collate_fn": collator,
        "seed": seed,
        "num_workers": workers,
        "pin_memory": run.data.pin_memory,
        "rank": rank,
        "world_size": world_size,
    }
    train = create_dataloader(train_ds, run.training.batch_size, shuffle=True, **common)
    val = create_dataloader(val_ds, run.training.batch_size, shuffle=False, **common) if len(val_ds) else None
    return train, val


def print_sample(model: Any, tokenizer: Any, device: torch.device, max_new_tokens: int = 200) -> str:
    """Generate a short continuation of a newline and print it."""
    try:
        prompt = tokenizer.encode("\n")
    except DataError:
        prompt = []
    prompt = prompt or [0]
    model.eval()
    ids = model.generate(
        torch.tensor([prompt], device=device),
        max_new_tokens=max_new_tokens,
        temperature=0.8,
        top_k=None,
        seed=0,
    )
    text = tokenizer.decode(ids[0, len(prompt) :].tolist())
    print("sample:\n" + text, flush=True)
    return text


def run_training(
    run: RunConfig,
    checkpoint: str | Path | None = None,
    quick_test: bool = False,
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Everything ``nima train`` does, as a function (returns the Trainer's results).

    ``checkpoint`` resumes a run; ``init_from`` starts a new run (fine-tuning) from a checkpoint's
    weights, with its model config. With both, the fine-tuning run resumes from ``checkpoint``.
    """
    from nima.distributed import cleanup, init_distributed
    from nima.models import create_model
    from nima.training.trainer import Trainer

    started = time.perf_counter()
    device_kind = (
        "cuda"
        if run.training.device.startswith("cuda")
        or (run.training.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    ctx = init_distributed(device_kind)
    say = print if ctx.is_main else (lambda *a, **k: None)
    try:
        prepared = prepare_data_once_per_node(run, ctx, allow_fallback=quick_test, say=say)
        say(
            f"data: {prepared.path} ({prepared.meta.get('train_tokens', '?')} train tokens, "
            f"{prepared.tokenizer.kind} tokenizer, vocab {prepared.tokenizer.vocab_size})"
        )
        if init_from:  # a fine-tuning run: the model is the checkpoint's (its own, once resumed)
            run = model_config_from(run, checkpoint or init_from, prepared.tokenizer, say=say)
        else:
            run = fit_vocab_size(run, prepared.tokenizer, say=say)
        train_loader, val_loader = build_loaders(run, prepared, ctx.rank, ctx.world_size)
        torch.manual_seed(run.training.seed)
        model = create_model(run.model)
        trainer = Trainer(model, run.training, train_loader, val_loader, tokenizer=prepared.tokenizer)
        if checkpoint:
            trainer.load_checkpoint(checkpoint)
        elif init_from:
            trainer.load_checkpoint(init_from, weights_only_model=True)
        results = trainer.train()
        if ctx.is_main:
            _print_summary(results, time.perf_counter() - started)
            if quick_test and trainer.sharded:  # generating would need every rank's shards
                print("sample: skipped (the model is sharded); run nima generate on the checkpoint")
            elif quick_test:
                print_sample(trainer.raw_model, prepared.tokenizer, trainer.device)
        return results
    finally:
        cleanup()


def _print_summary(results: dict[str, Any], total_s: float) -> None:
    val = results["final_val_loss"]
    best = results["best_val_loss"]
    parts = [
        f"done: {results['steps']} steps, {results['tokens']:,} tokens in {results['wall_time_s']:.1f}s "
        f"({results['train_tokens_per_s']:,.0f} tok/s training)"
    ]
    if val is not None:
        parts.append(f"val loss {val:.4f} (best {best:.4f})")
    parts.append(f"total {total_s:.1f}s")
    print("; ".join(parts), flush=True)
    if results.get("last_checkpoint"):
        print(f"checkpoint: {results['last_checkpoint']}", flush=True)
    if results.get("stop_signal"):
        print("to continue: run the same command with --resume", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run ``nima train``; user errors raise NimaError (printed as one line, exit 2, by nima.cli)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, rest = build_parser().parse_known_args(argv)
    overrides = parse_overrides(rest)
    run = load_run_config(args.config, args.quick_test, overrides)
    checkpoint = args.checkpoint
    if args.resume and checkpoint:
        raise ConfigError("give either --checkpoint PATH or --resume (which finds the newest checkpoint)")
    if args.init_from and checkpoint:
        raise ConfigError("give either --checkpoint (resume a run) or --init_from (start one from weights)")
    if args.resume:
        checkpoint = newest_checkpoint(run.training.output_dir)
        if checkpoint is None:
            print(f"--resume: no checkpoint in {run.training.output_dir}/checkpoints yet; starting afresh")
    results = run_training(run, checkpoint=checkpoint, quick_test=args.quick_test, init_from=args.init_from)
    if results.get("stop_signal"):  # preempted: saved, and the exit status says why it stopped
        return 128 + signal.Signals[results["stop_signal"]].value
    return 0
