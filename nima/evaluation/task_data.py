"""Downstream tasks' data: HellaSwag, and a user's own multiple-choice or completion jsonl.

- ``hellaswag``: the published validation set (10,042 examples), downloaded once into
  ``<data_dir>/hellaswag/hellaswag_val.jsonl`` and checked by sha256, or copied from the offline
  mirror ``$NIMA_DATA_MIRROR/hellaswag/``, as tiny Shakespeare is. Each example is turned into a
  prompt and four endings exactly as lm-evaluation-harness does (:func:`hellaswag_preprocess`).
- ``mc``: one ``{"context": ..., "choices": [...], "label": i}`` object per line.
- ``completion``: one ``{"context": ..., "target": ...}`` object per line; the target is scored
  as written, so a word that follows a space starts with that space (``" cat"``).

Every line is checked: a missing field, a label out of range or an empty choice is one
:class:`~nima.errors.DataError` naming the file, the line and the fix.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nima.config.eval_tasks import TASK_NAMES
from nima.config_fields import suggest
from nima.data import default_data_dir
from nima.data.sources import KnownDataset, fetch_known_dataset
from nima.errors import ConfigError, DataError

HELLASWAG = KnownDataset(
    name="hellaswag",
    url="https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl",
    # The checksum Hugging Face `datasets` recorded for this file (datasets/hellaswag/
    # dataset_infos.json: 12,246,618 bytes); its git blob in rowanz/hellaswag is 0f5ee25d72216f12.
    sha256="0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588",
    filename="hellaswag_val.jsonl",
)
HELLASWAG_EXAMPLES = 10_042
TARGET_DELIMITER = " "
"""What lm-evaluation-harness puts between a multiple-choice context and each choice."""


@dataclass(frozen=True)
class MCExample:
    """A multiple-choice question: ``" " + choices[i]`` is scored after ``context``."""

    context: str
    choices: list[str]
    label: int
    """Index of the right choice."""


@dataclass(frozen=True)
class CompletionExample:
    """A context and the continuation it should have (scored as written)."""

    context: str
    target: str


@dataclass
class Task:
    """A task's examples, ready to score."""

    name: str
    """hellaswag, mc or completion."""
    kind: str
    """mc (multiple choice, also HellaSwag's kind) or completion."""
    examples: list[MCExample] | list[CompletionExample] = field(default_factory=list)
    source: str = ""
    """The file the examples come from."""


def hellaswag_preprocess(text: str) -> str:
    """lm-evaluation-harness's clean-up of HellaSwag text: WikiHow's ``[title]`` becomes a full
    stop and other bracketed markers go (``[header]``, ``[step]`` ...)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_example(doc: dict[str, Any]) -> MCExample:
    """One line of ``hellaswag_val.jsonl`` as the harness's prompt and choices."""
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return MCExample(
        context=hellaswag_preprocess(doc["activity_label"] + ": " + context),
        choices=[hellaswag_preprocess(ending) for ending in doc["endings"]],
        label=int(doc["label"]),
    )


def load_task(
    name: str,
    *,
    data: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
) -> Task:
    """The first ``limit`` examples (all when None) of task ``name``: ``hellaswag`` (from ``data``
    when given, else the validation set under ``data_dir``, fetched once), or ``mc`` /
    ``completion`` from the jsonl file ``data``."""
    if name not in TASK_NAMES:
        raise ConfigError(
            f"unknown task {name!r}{suggest(str(name), TASK_NAMES)}; choose one of: {', '.join(TASK_NAMES)}"
        )
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"limit {limit} must be at least 1 (or None for every example)")
    if name == "hellaswag":
        path = Path(data) if data is not None else _hellaswag_file(data_dir)
        return Task(name, "mc", _read(path, _hellaswag_line, limit), str(path))
    if data is None:
        shape = "{context, choices, label}" if name == "mc" else "{context, target}"
        raise ConfigError(f"task {name} needs a data file: a jsonl of {shape} objects (--data FILE)")
    reader = _mc_line if name == "mc" else _completion_line
    return Task(name, name, _read(Path(data), reader, limit), str(data))


def _hellaswag_file(data_dir: str | os.PathLike | None) -> Path:
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return fetch_known_dataset(HELLASWAG, root)


# ---------------------------------------------------------------------------------- reading


def _read(path: Path, reader: Callable[[dict[str, Any], str], Any], limit: int | None) -> list[Any]:
    examples = []
    for where, doc in _objects(path):
        if limit is not None and len(examples) >= limit:
            break
        examples.append(reader(doc, where))
    if not examples:
        raise DataError(f"{path} holds no examples: write one JSON object per line")
    return examples


def _objects(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``("<file>:<line>", object)`` for each non-blank line."""
    try:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    doc = json.loads(line)
                except ValueError as err:
                    why = getattr(err, "msg", err)
                    raise DataError(f"{where}: not valid JSON ({why}); write one object per line") from None
                if not isinstance(doc, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(doc).__name__}")
                yield where, doc
    except FileNotFoundError:
        raise DataError(f"task file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {err.start})") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder; give the task's jsonl file") from None


def _field(doc: dict[str, Any], key: str, where: str, fields: str) -> Any:
    if key not in doc:
        raise DataError(f"{where}: missing field {key!r}; each line needs {fields}")
    return doc[key]


def _text(value: Any, what: str, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {what} must be a string, got {value!r}")
    if not empty and not value.strip():
        raise DataError(f"{where}: {what} is empty; give it some text")
    return value


def _label(value: Any, n_choices: int, where: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():  # HellaSwag's files spell some as "3"
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: label must be the index of the right choice (an integer), got {value!r}")
    if not 0 <= value < n_choices:
        raise DataError(
            f"{where}: label {value} is out of range for {n_choices} choices; use 0 to {n_choices - 1}"
        )
    return value


def _choices(value: Any, where: str, *, empty: bool = False) -> list[str]:
    if not isinstance(value, list) or len(value) < 2:
        raise DataError(f"{where}: choices must be a list of at least 2 strings, got {value!r}")
    for i, choice in enumerate(value):
        _text(choice, f"choice {i}", where, empty=empty)
    return value


def _mc_line(doc: dict[str, Any], where: str) -> MCExample:
    fields = "context, choices and label"
    context = _text(_field(doc, "context", where, fields), "context", where)
    choices = _choices(_field(doc, "choices", where, fields), where)
    label = _label(_field(doc, "label", where, fields), len(choices), where)
    return MCExample(context, list(choices), label)


def _completion_line(doc: dict[str, Any], where: str) -> CompletionExample:
    fields = "context and target"
    context = _text(_field(doc, "context", where, fields), "context", where)
    target = _text(_field(doc, "target", where, fields), "target", where)
    return CompletionExample(context, target)


def _hellaswag_line(doc: dict[str, Any], where: str) -> MCExample:
    fields = "activity_label, ctx_a, ctx_b, endings and label (HellaSwag's format)"
    for key in ("activity_label", "ctx_a", "ctx_b"):
        _text(_field(doc, key, where, fields), key, where, empty=True)
    # The published endings are scored whatever they hold, as the harness scores them.
    endings = _choices(_field(doc, "endings", where, fields), where, empty=True)
    _label(_field(doc, "label", where, fields), len(endings), where)
    return hellaswag_example(doc)


__all__ = [
    "HELLASWAG",
    "CompletionExample",
    "MCExample",
    "Task",
    "hellaswag_example",
    "hellaswag_preprocess",
    "load_task",
]
