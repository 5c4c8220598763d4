"""A run folder on disk, read back: what ``nima plot`` and ``nima report`` work from.

A run folder (``training.output_dir``) holds::

    config.yaml              the resolved run config (nima train / the recipe), the command in a comment
    logs/metrics.jsonl       one JSON record per logged step (loss, lr, tokens_per_s, tokens, time_s, ...)
    logs/run_info.json       where and how it ran (device, precision, torch, world size, parameters),
                             and at the end its results and a generated sample (the RunReport callback)
    results.json             what nima train returned
    checkpoints/*.pt         the checkpoints (their metadata: step, configs, tokenizer, best loss)

Every file is optional: a folder is read for whatever it has.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nima.checkpoint import load_checkpoint_file, newest_checkpoint
from nima.config import RunConfig
from nima.errors import ConfigError
from nima.files import atomic_write_json, atomic_write_text

CONFIG_FILE = "config.yaml"
METRICS_FILE = "logs/metrics.jsonl"
RUN_INFO_FILE = "logs/run_info.json"
RESULTS_FILE = "results.json"
COMMAND_PREFIX = "# command: "


# ---------------------------------------------------------------------------------- config.yaml


def write_run_config(output_dir: str | Path, config: Any, command: str | None = None) -> Path:
    """Write ``<output_dir>/config.yaml``: the resolved :class:`~nima.config.RunConfig` (a file
    ``nima train --config`` reads back), with the command that ran it in a comment."""
    path = Path(output_dir) / CONFIG_FILE
    header = [
        "# The resolved config of this run (vocabulary fitted to the tokenizer, batch size chosen),",
        f"# written at its start. Train it again: nima train --config {path}",
    ]
    if command:
        header.append(COMMAND_PREFIX + command)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, "\n".join(header) + "\n" + config.to_yaml())


def read_run_config(path: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """The config dict of a ``config.yaml`` and the command in its header (None for what is missing
    or unreadable: :func:`run_config_problem` says why)."""
    path = Path(path)
    if not path.is_file():
        return None, None
    text = path.read_text(encoding="utf-8", errors="replace")
    command = next(
        (
            line[len(COMMAND_PREFIX) :].strip()
            for line in text.splitlines()
            if line.startswith(COMMAND_PREFIX)
        ),
        None,
    )
    try:
        config = yaml.safe_load(text)
    except Exception:  # any YAML problem: run_config_problem() names it
        config = None
    return (config if isinstance(config, dict) else None), command


def run_config_problem(path: str | Path) -> str | None:
    """Why the run folder's ``config.yaml`` at ``path`` cannot train the run again (it is not
    UTF-8, not YAML, or not a valid config), or None when it can or there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        RunConfig.from_yaml(path)
    except ConfigError as err:
        return str(err)
    return None


def rerun_commands(command: str | None, config_path: str | None) -> dict[str, str]:
    """The commands that train a run again and continue it: ``again`` (the recorded command less any
    ``--resume`` / ``--checkpoint``), ``from_config`` and ``resume``."""
    out: dict[str, str] = {}
    if command:
        try:
            words = shlex.split(command)
        except ValueError:
            words = command.split()
        kept, skip = [], False
        for word in words:
            if skip:
                skip = False
                continue
            if word == "--resume" or word.startswith("--checkpoint="):
                continue
            if word == "--checkpoint":
                skip = True
                continue
            kept.append(word)
        out["again"] = shlex.join(kept)
    if config_path:
        out["from_config"] = shlex.join(["nima", "train", "--config", config_path])
        out["resume"] = out["from_config"] + " --resume"
    elif "again" in out:
        out["resume"] = out["again"] + " --resume"
    return out


# ---------------------------------------------------------------------------------- metrics.jsonl


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` in training order.

    A resumed run appends to the file from its checkpoint's step: records of the steps it went
    back over are replaced by the new ones, and ``time_s`` (which restarts at each ``train()``) is
    made to run on across resumes. A record without ``tokens`` / ``time_s`` (the final evaluation)
    takes them from the record of the same step. A damaged line (a killed writer's last) is skipped.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records: list[dict[str, Any]] = []
    offset, previous = 0.0, None  # time_s of earlier train() calls; the last raw time_s read
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        step = record["step"]
        if records and (
            step < records[-1]["step"]
            or (step == records[-1]["step"] and "loss" in record and _has_loss_at(records, step))
        ):  # resumed from an earlier checkpoint: the steps since are trained (and logged) again
            records = [r for r in records if r["step"] < step]
            offset, previous = _last_time(records), None
        time_s = record.get("time_s")
        if _is_number(time_s):
            if previous is not None and time_s < previous:  # a new train() call, same steps
                offset = _last_time(records)
            previous = time_s
            record["time_s"] = time_s + offset
        records.append(record)
    by_step: dict[int, dict[str, Any]] = {}
    for record in records:
        for key in ("tokens", "time_s"):
            if key in record:
                by_step.setdefault(record["step"], {})[key] = record[key]
    for record in records:
        for key, value in by_step.get(record["step"], {}).items():
            record.setdefault(key, value)
    return records


def _has_loss_at(records: list[dict[str, Any]], step: int) -> bool:
    for record in reversed(records):
        if record["step"] != step:
            return False
        if "loss" in record:
            return True
    return False


def _last_time(records: list[dict[str, Any]]) -> float:
    return next((r["time_s"] for r in reversed(records) if "time_s" in r), 0.0)


def series(records: list[dict[str, Any]], metric: str, x: str = "step") -> tuple[list[float], list[float]]:
    """``(xs, ys)`` of one metric against ``step``, ``tokens`` or ``time_s`` (finite values only)."""
    xs, ys = [], []
    for record in records:
        value, where = record.get(metric), record.get(x)
        if _is_number(value) and _is_number(where) and math.isfinite(value):
            xs.append(float(where))
            ys.append(float(value))
    return xs, ys


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------- the folder


@dataclass
class RunFolder:
    """Everything a run folder holds, read once."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] | None = None
    """config.yaml, else the config in run_info.json (a run trained from Python)."""
    config_text: str | None = None
    """config.yaml as written (without its comment header)."""
    command: str | None = None
    results: dict[str, Any] | None = None
    """results.json, else the results in run_info.json."""
    info: dict[str, Any] = field(default_factory=dict)
    config_problem: str | None = None
    """Why config.yaml cannot be used (damaged or invalid), when it cannot."""
    checkpoint: dict[str, Any] | None = None
    """The newest checkpoint's metadata (no tensors) and ``parameters``, when asked for."""
    checkpoint_path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def config_path(self) -> Path | None:
        """config.yaml, when there is one that trains the run again."""
        path = self.path / CONFIG_FILE
        return path if path.is_file() and not self.config_problem else None

    def values(self, metric: str) -> list[float]:
        return series(self.records, metric)[1]


def is_run_folder(path: str | Path) -> bool:
    path = Path(path)
    return any((path / name).exists() for name in (METRICS_FILE, RUN_INFO_FILE, RESULTS_FILE, "checkpoints"))


def run_folder_of(path: str | Path) -> Path:
    """The run folder of ``path`` (a run folder, or its ``metrics.jsonl`` / ``logs`` folder);
    ConfigError when it is none."""
    path = Path(path)
    for candidate in (path, path.parent, path.parent.parent):
        if is_run_folder(candidate) and (candidate == path or path.name in ("logs", "metrics.jsonl")):
            return candidate
    if not path.exists():
        raise ConfigError(f"run folder not found: {path}")
    raise ConfigError(
        f"{path} is not a run folder (no {METRICS_FILE}, {RESULTS_FILE} or checkpoints/ in it); "
        "give a training.output_dir"
    )


def load_run(path: str | Path, checkpoint: bool = True) -> RunFolder:
    """Read a run folder; ``checkpoint``: also the newest checkpoint's metadata (memory-mapped)."""
    root = run_folder_of(path)
    run = RunFolder(root, records=read_metrics(root / METRICS_FILE))
    info_path = root / RUN_INFO_FILE
    run.info = _json_object(info_path) or {}
    run.config, run.command = read_run_config(root / CONFIG_FILE)
    run.config_problem = run_config_problem(root / CONFIG_FILE)
    if run.config_problem:
        run.config = None
    if run.config is not None:
        text = (root / CONFIG_FILE).read_text(encoding="utf-8", errors="replace")
        run.config_text = "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()
    elif isinstance(run.info.get("config"), dict):
        run.config = run.info["config"]
    results_path = root / RESULTS_FILE
    run.results = _json_object(results_path)
    if isinstance(run.info.get("results"), dict) and _newer(info_path, results_path):
        run.results = run.info["results"]
    if checkpoint:
        run.checkpoint_path, run.checkpoint = newest_checkpoint_info(root)
    return run


def _json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing or damaged (a killed writer's, or
    edited by hand): the report is made from what the folder has."""
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError
        return None
    return loaded if isinstance(loaded, dict) else None


def _newer(a: Path, b: Path) -> bool:
    """Whether file ``a`` was written after ``b`` (or ``b`` is missing)."""
    if not b.is_file():
        return True
    return a.is_file() and a.stat().st_mtime_ns >= b.stat().st_mtime_ns


def newest_checkpoint_info(root: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint (``step_N`` / ``epoch_N``, else ``best_model``) and its metadata:
    every entry but the tensors, plus ``parameters`` (the model's, tied weights counted once)."""
    path = newest_checkpoint(root)
    if path is None and (root / "checkpoints" / "best_model.pt").is_file():
        path = root / "checkpoints" / "best_model.pt"
    if path is None:
        return None, None
    try:
        ckpt = load_checkpoint_file(path, mmap=True)
    except Exception:  # a damaged checkpoint leaves the report without its metadata, not failed
        return path, None
    state = ckpt.get("model") or {}
    storages, parameters = set(), 0
    for tensor in state.values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in storages:
            storages.add(key)
            parameters += tensor.numel()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "rng", "rng_by_rank", "scaler")}
    meta["parameters"] = parameters
    return path, meta


# ---------------------------------------------------------------------------------- run_info.json


def update_run_info(output_dir: str | Path, **values: Any) -> Path:
    """Merge ``values`` into ``<output_dir>/logs/run_info.json``."""
    path = Path(output_dir) / RUN_INFO_FILE
    info = _json_object(path) or {}
    info.update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, info)


__all__ = [
    "RunFolder",
    "load_run",
    "read_metrics",
    "read_run_config",
    "rerun_commands",
    "series",
    "update_run_info",
    "write_run_config",
]
