"""``report.md``: one page on a run — what was trained, on what, how fast, how well, a picture of
the loss, a generated sample, and the commands that train it again and continue it.

:func:`write_report` builds it from the files of the run folder alone (see
:mod:`nima.reporting.runs`), so the page the Trainer writes when a run ends and the one
``nima report RUN_DIR`` rebuilds later are the same page.
"""

from __future__ import annotations

import datetime
import math
import re
from pathlib import Path
from typing import Any

import yaml

from nima.data.preparation import load_prepared
from nima.evaluation.text_units import count_text_units
from nima.files import atomic_write_text
from nima.reporting.plot import MISSING, PLOT_FILE, plots_available
from nima.reporting.runs import CONFIG_FILE, RUN_INFO_FILE, RunFolder, load_run, rerun_commands

REPORT_FILE = "report.md"
BYTES_SAMPLE_TOKENS = 262_144
"""Validation tokens read to measure bytes per token (for bits per byte)."""


def write_report(run_dir: str | Path, run: RunFolder | None = None) -> Path:
    """Write ``<run_dir>/report.md`` from the run folder's files; returns its path."""
    run = run or load_run(run_dir)
    return atomic_write_text(Path(run.path) / REPORT_FILE, render_report(run))


# ------------------------------------------------------------------------------------ figures


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    """A whole number >= 0 from a run's files, or None (a hand-edited or damaged file can hold
    anything: the report shows "?" rather than failing)."""
    number = _num(value)
    return int(number) if number is not None and number >= 0 and number == int(number) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"


def _parameters(n: float | None) -> str:
    """Like the start of training says it: 0.61M, 124.44M, 1.50B."""
    if n is None:
        return "?"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    return f"{n / 1e6:.2f}M" if n >= 1e4 else f"{int(n):,}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fence(text: str, lang: str = "text") -> str:
    """``text`` in a code fence longer than any backtick run inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def bytes_per_token(prepared_path: str | Path | None, max_tokens: int = BYTES_SAMPLE_TOKENS) -> float | None:
    """UTF-8 bytes per token of the start of a prepared dataset's validation split (None when the
    data or its tokenizer cannot be read)."""
    if not prepared_path:
        return None
    try:
        data = load_prepared(prepared_path)
        ids = data.tokens("val")[:max_tokens]
        if len(ids) == 0:
            return None
        n_bytes, _ = count_text_units(data.tokenizer, ids)
        return n_bytes / len(ids) if n_bytes else None
    except Exception:  # moved or deleted data: the report goes without bits per byte
        return None


def _task_figures(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """``eval/<task>_acc``-style figures of ``training.eval_tasks``: (step, value) at each evaluation."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key.startswith("eval/") and _num(value) is not None:
                out.setdefault(key, []).append((record["step"], float(value)))
    return out


def gather(run: RunFolder) -> dict[str, Any]:
    """The report's figures, from whichever of the run's files has them."""
    info, results, ckpt = run.info, run.results or {}, run.checkpoint or {}
    config = run.config or {}
    model = _mapping(config.get("model")) or _mapping(ckpt.get("model_config"))
    training = _mapping(config.get("training")) or _mapping(ckpt.get("training_config"))
    records = run.records
    val = run.values("val_loss")
    best_val = _first(
        _num(results.get("best_val_loss")), min(val, default=None), _num(ckpt.get("best_val_loss"))
    )
    final_val = _first(
        _num(results.get("final_val_loss")), val[-1] if val else None, _num(ckpt.get("last_val_loss"))
    )
    best_step = None
    if best_val is not None:
        best_step = next(
            (
                r["step"]
                for r in records
                if _num(r.get("val_loss")) is not None and abs(r["val_loss"] - best_val) < 1e-12
            ),
            None,
        )
    steps = _first(
        _count(results.get("steps")), _count(ckpt.get("step")), records[-1]["step"] if records else None
    )
    tokens_logged = [_count(r.get("tokens")) for r in records if _count(r.get("tokens")) is not None]
    tokens_total = _first(
        tokens_logged[-1] if tokens_logged else None,
        _count(ckpt.get("tokens_seen")),
        _count(results.get("tokens")),
    )
    mfu = [v for v in run.values("mfu")[1:] or run.values("mfu")]
    memory = run.values("memory_gib")
    prepared = _first(
        _text(info.get("prepared_path")),
        _text(ckpt.get("prepared_path")),
        _text(_mapping(ckpt.get("data")).get("prepared_path")),
    )
    ratio = bytes_per_token(prepared) if final_val is not None or best_val is not None else None
    return {
        "name": run.name,
        "model": model,
        "training": training,
        "data": _mapping(config.get("data")),
        "prepared_path": prepared,
        "tokenizer": _mapping(ckpt.get("tokenizer")),
        "parameters": _first(_count(info.get("parameters")), _count(ckpt.get("parameters"))),
        "steps": steps,
        "epochs": _num(results.get("epochs")),
        "tokens_total": tokens_total,
        "tokens_session": _count(results.get("tokens")),
        "wall_time_s": _num(results.get("wall_time_s")),
        "train_tokens_per_s": _num(results.get("train_tokens_per_s")),
        "tokens_per_s": _num(results.get("tokens_per_s")),
        "stop_reason": _text(results.get("stop_reason")),
        "final_train_loss": _first(_num(results.get("final_train_loss")), (run.values("loss") or [None])[-1]),
        "final_val_loss": final_val,
        "best_val_loss": best_val,
        "best_step": best_step,
        "tasks": _task_figures(records),
        "bytes_per_token": ratio,
        "mfu": sorted(mfu)[len(mfu) // 2] if mfu else None,
        "peak_memory_gib": max(memory) if memory else None,
        "skipped_steps": int(sum(run.values("skipped_steps"))),
        "device": _text(info.get("device")),
        "device_name": _text(info.get("device_name")),
        "precision": _first(*(_text(d.get("precision")) for d in (info, results, ckpt))),
        "precision_reason": _text(info.get("precision_reason")),
        "torch": _text(info.get("torch")),
        "world_size": _first(_count(info.get("world_size")), _count(ckpt.get("world_size"))),
        "sample": _text(info.get("sample")),
        "sample_step": _count(info.get("sample_step")),
        "sample_settings": _text(info.get("sample_settings")),
    }


# ------------------------------------------------------------------------------------ the page


def _model_line(f: dict[str, Any]) -> str:
    model = f["model"]
    parts = [f"{_parameters(f['parameters'])} parameters" if f["parameters"] else "parameters: ?"]
    shape = [
        str(model.get("arch") or ""),
        f"{model['n_layers']} layers" if model.get("n_layers") else "",
        f"width {model['d_model']}" if model.get("d_model") else "",
        f"{model['n_heads']} heads" if model.get("n_heads") else "",
        f"context {model['max_seq_len']}" if model.get("max_seq_len") else "",
        f"vocabulary {model['vocab_size']}" if model.get("vocab_size") else "",
    ]
    shape = [s for s in shape if s]
    return parts[0] + (f" ({', '.join(shape)})" if shape else "")


def _data_line(f: dict[str, Any]) -> str:
    data, tok = f["data"], f["tokenizer"]
    dataset = data.get("dataset")
    if not dataset and f["prepared_path"]:  # <data_dir>/<dataset>/<tokenizer>
        dataset = Path(f["prepared_path"]).parent.name
    kind = data.get("tokenizer") or tok.get("kind")
    parts = [str(dataset)] if dataset else []
    if kind:
        parts.append(f"{kind} tokenizer" + (f" ({tok['vocab_size']} ids)" if tok.get("vocab_size") else ""))
    return ", ".join(parts) or "?"


def _loss_cell(loss: float | None, ratio: float | None) -> str:
    if loss is None:
        return "—"
    text = f"{loss:.4f} (perplexity {math.exp(min(loss, 50.0)):.2f}"
    if ratio:
        text += f", ≈{loss / (math.log(2) * ratio):.3f} bits per byte"
    return text + ")"


def _headline(f: dict[str, Any]) -> str:
    """One line: the best validation loss (or the training loss), after how much, how long, where."""
    if f["best_val_loss"] is not None:
        parts = [f"Best validation loss **{f['best_val_loss']:.4f}**"]
    elif f["final_train_loss"] is not None:
        parts = [f"Training loss **{f['final_train_loss']:.4f}**"]
    else:
        parts = ["Nothing logged yet"]
    if f["steps"] is not None:
        parts.append(f"after {f['steps']} steps")
    if f["tokens_total"] is not None:
        parts.append(f"({int(f['tokens_total']):,} tokens)")
    if f["wall_time_s"] is not None:
        parts.append(f"in {_duration(f['wall_time_s'])}")
    if f["device"]:
        parts.append(f"on {f['device']}")
    return " ".join(parts) + "."


def _title_lines(run: RunFolder, f: dict[str, Any]) -> list[str]:
    """The title, where the page comes from, and the headline."""
    written = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"# Run report: {f['name']}",
        "",
        f"Run folder `{run.path}`; written {written}. Rebuild this page from the folder's files "
        f"with `nima report {run.path}`.",
        "",
        _headline(f),
        "",
    ]


def _what_was_trained(f: dict[str, Any]) -> list[str]:
    """Model, data, length, recipe and why it stopped."""
    out = [
        "## What was trained",
        "",
        "| | |",
        "|---|---|",
        f"| model | {_cell(_model_line(f))} |",
        f"| data | {_cell(_data_line(f))} |",
    ]
    trained = f"{f['steps']} optimizer steps" if f["steps"] is not None else "?"
    if f["tokens_total"] is not None:
        trained += f", {int(f['tokens_total']):,} training tokens"
    if f["epochs"] is not None:
        trained += f" ({f['epochs']:.2f} epochs)"
    out.append(f"| trained | {_cell(trained)} |")
    session = f["tokens_session"]
    if session is not None and f["tokens_total"] is not None and session != f["tokens_total"]:
        out.append(f"| this session | {int(session):,} tokens (the run was resumed) |")
    training = f["training"]
    if training:
        batch = training.get("batch_size")
        accumulation = training.get("gradient_accumulation_steps") or 1
        out.append(
            f"| recipe | batch {batch} x {accumulation} accumulation x {f['world_size'] or 1} process(es), "
            f"lr {training.get('learning_rate')} ({training.get('lr_scheduler_type')}, "
            f"{training.get('warmup_steps')} warmup steps), {training.get('optimizer_type')} |"
        )
    if f["stop_reason"]:
        out.append(f"| stopped | {_cell(f['stop_reason'])} |")
    return out


def _how_well(f: dict[str, Any]) -> list[str]:
    """The losses, and what they are measured on."""
    out = ["", "## How well", "", "| | |", "|---|---|"]
    out.append(f"| final validation loss | {_loss_cell(f['final_val_loss'], f['bytes_per_token'])} |")
    best = _loss_cell(f["best_val_loss"], f["bytes_per_token"])
    if f["best_step"] is not None:
        best += f" at step {f['best_step']} (checkpoints/best_model.pt)"
    out.append(f"| best validation loss | {best} |")
    if f["final_train_loss"] is not None:
        out.append(f"| final training loss | {f['final_train_loss']:.4f} |")
    for metric, history in f["tasks"].items():
        step, last = history[-1]
        best_step, best = max(history, key=lambda h: (h[1], -h[0]))
        out.append(f"| {metric} | {last:.4f} at step {step} (best {best:.4f} at step {best_step}) |")
    if f["skipped_steps"]:
        why = "nan or inf gradients, or fp16 loss-scale overflows; not applied"
        out.append(f"| skipped steps | {f['skipped_steps']} ({why}) |")
    out.append("")
    out.append(
        "Losses are in nats per token over the validation batches of each evaluation "
        "(`training.eval_batches`)."
        + (
            f" Bits per byte use the validation split's {f['bytes_per_token']:.3f} UTF-8 bytes per "
            "token; they compare across tokenizers."
            if f["bytes_per_token"]
            else ""
        )
        + " `nima eval --checkpoint ...` scores a whole split exactly."
        + (
            " Task accuracies (`training.eval_tasks`) cover each task's first `limit` examples; "
            "`nima eval --checkpoint ... --task NAME` scores a whole task."
            if f["tasks"]
            else ""
        )
    )
    return out


def _how_fast(f: dict[str, Any]) -> list[str]:
    """Throughput, MFU, wall time and peak memory."""
    out = ["", "## How fast", "", "| | |", "|---|---|"]
    if f["train_tokens_per_s"] is not None:
        out.append(f"| tokens/s (training steps) | {f['train_tokens_per_s']:,.0f} |")
    if f["tokens_per_s"] is not None:
        out.append(f"| tokens/s (with evaluation and checkpoints) | {f['tokens_per_s']:,.0f} |")
    mfu = f"{100 * f['mfu']:.1f}% (median of the logged steps)" if f["mfu"] is not None else "— (GPUs only)"
    out.append(f"| MFU | {mfu} |")
    out.append(f"| wall time | {_duration(f['wall_time_s'])} |")
    if f["peak_memory_gib"] is not None:
        what = "GPU memory allocated" if str(f["device"] or "").startswith("cuda") else "process resident set"
        out.append(f"| peak memory | {f['peak_memory_gib']:.2f} GiB ({what}) |")
    return out


def _where(f: dict[str, Any]) -> list[str]:
    """Device, precision, torch version and process count."""
    out = ["", "## Where", "", "| | |", "|---|---|"]
    device = f["device"] or "?"
    if f["device_name"]:
        device += f" ({f['device_name']})"
    out.append(f"| device | {_cell(device)} |")
    precision = f["precision"] or "?"
    if f["precision_reason"]:
        precision += f" ({f['precision_reason']})"
    out.append(f"| precision | {_cell(precision)} |")
    out.append(f"| torch | {f['torch'] or '?'} |")
    out.append(f"| processes | {f['world_size'] or '?'} |")
    return out


def _loss_picture(run: RunFolder, f: dict[str, Any]) -> list[str]:
    """The loss plot when it was drawn, else why not (and how to draw it, where it can be)."""
    out = ["", "## Loss", ""]
    if (run.path / PLOT_FILE).is_file():
        out.append(f"![loss]({PLOT_FILE})")
    else:
        out.append(f"No {PLOT_FILE}: {_why_no_plot(run, f)}")
    return out


def _why_no_plot(run: RunFolder, f: dict[str, Any]) -> str:
    """The true reason: nothing logged to draw yet, matplotlib missing, or not drawn (yet)."""
    if not run.records:
        return _nothing_logged(f["steps"], f["training"].get("log_every"))
    if not plots_available():
        return f"{MISSING}; then `nima plot {run.path}` draws it."
    return f"`nima plot {run.path}` draws it."


def _nothing_logged(steps: int | None, log_every: int | None) -> str:
    """Why ``logs/metrics.jsonl`` holds no curve: usually a run stopped before its first logging step."""
    if steps is not None and isinstance(log_every, int) and steps < log_every:
        return (
            f"no metrics were logged yet: the run stopped at step {steps}, before its first logging "
            f"step (training.log_every: {log_every})."
        )
    return "no metrics were logged yet (logs/metrics.jsonl holds none), so there is no curve to draw."


def _sample(f: dict[str, Any]) -> list[str]:
    out = ["", "## Sample", ""]
    if f["sample"]:
        settings = f["sample_settings"] or "generated"
        out.append(f"At step {f['sample_step']}, {settings}:")
        out += ["", _fence(f["sample"])]
    else:
        out.append("No sample (no tokenizer, or the run did not finish).")
    return out


def _config(run: RunFolder) -> list[str]:
    """The resolved config.yaml, or the configs of a run trained from Python, folded away."""
    out = ["", "## Config", ""]
    if run.config_problem:
        out += [f"`{CONFIG_FILE}` cannot be used: {run.config_problem}", ""]
    if run.config_text or run.config:
        if run.config_text:
            summary, text = f"{run.config_path} (every value, resolved)", run.config_text
        elif run.config_problem:
            summary = f"the configs the run recorded in {RUN_INFO_FILE}"
            text = yaml.safe_dump(run.config, sort_keys=False)
        else:
            summary = "trained from Python (no config.yaml): its configs"
            text = yaml.safe_dump(run.config, sort_keys=False)
        out += ["<details>", f"<summary>{summary}</summary>", "", _fence(text, "yaml"), "", "</details>"]
    else:
        out.append("No config found in the run folder.")
    return out


def _train_again(run: RunFolder) -> list[str]:
    """The commands that train the run again and continue it (or the Python way, without any)."""
    out = ["", "## Train it again, continue it", ""]
    commands = rerun_commands(run.command, str(run.config_path) if run.config_path else None)
    lines = []
    if "again" in commands:
        lines += ["# the command that ran it, from the folder it was started in", commands["again"]]
    if "from_config" in commands:
        lines += [
            "# the same from its resolved config (add --training.output_dir=... to keep this run's files)"
        ]
        lines += [commands["from_config"]]
    if "resume" in commands:
        lines += ["# continue from its newest checkpoint (raise --training.max_steps to train longer)"]
        lines += [commands["resume"]]
    if lines:
        out += [_fence("\n".join(lines), "bash")]
    else:
        newest = run.checkpoint_path or "checkpoints/step_N.pt"
        out.append(
            f"Trained from Python: build the same Trainer, then `trainer.load_checkpoint('{newest}')` "
            "and `trainer.train()` continue it."
        )
    return out


def render_report(run: RunFolder) -> str:
    """The markdown of ``report.md`` for ``run``."""
    f = gather(run)
    out = _title_lines(run, f)
    out += _what_was_trained(f)
    out += _how_well(f)
    out += _how_fast(f)
    out += _where(f)
    out += _loss_picture(run, f)
    out += _sample(f)
    out += _config(run)
    out += _train_again(run)
    return "\n".join(out) + "\n"


__all__ = ["REPORT_FILE", "bytes_per_token", "gather", "render_report", "write_report"]
