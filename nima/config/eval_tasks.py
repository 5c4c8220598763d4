"""``training.eval_tasks``: the downstream tasks a run scores at every evaluation.

Each entry is a mapping (or just a task's name)::

    eval_tasks:
      - {task: hellaswag, limit: 200}
      - {task: mc, data: my_quiz.jsonl, limit: 100}
      - {task: completion, data: last_words.jsonl, name: lastword}

``task`` is one of :data:`TASK_NAMES`; ``data`` the jsonl file of an ``mc`` or ``completion`` task
(for ``hellaswag``, a local copy instead of the downloaded file); ``limit`` scores the first N
examples (default :data:`DEFAULT_LIMIT`; null scores them all); ``name`` names the metrics,
``eval/<name>_acc`` and ``eval/<name>_acc_norm`` (default: ``hellaswag``, or the data file's stem).

The entries are checked when the config is read, so a typo stops ``nima train`` before any data is
prepared; the files themselves are read when the run is assembled (:mod:`nima.training.task_evaluator`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from nima.config_fields import suggest
from nima.errors import ConfigError

TASK_NAMES = ("hellaswag", "mc", "completion")
"""The built-in tasks (:func:`nima.evaluation.tasks.load_task`)."""
NEEDS_DATA = ("mc", "completion")
DEFAULT_LIMIT = 200
"""Examples per task and evaluation when an entry gives no ``limit``: a HellaSwag evaluation of 200
examples (800 choices) takes seconds, and its accuracy is known to about +-3 points."""
SPEC_KEYS = ("task", "data", "limit", "name")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
KEY = "training.eval_tasks"


def check_eval_tasks(value: Any) -> list[dict[str, Any]]:
    """``value`` as a list of ``{task, data, limit, name}`` dicts, every key filled in; a ConfigError
    naming ``training.eval_tasks[i]`` for anything wrong."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{KEY} must be a list such as [{{task: hellaswag, limit: 200}}], got {value!r}")
    specs: list[dict[str, Any]] = []
    for index, entry in enumerate(value):
        spec = _check_entry(entry, f"{KEY}[{index}]")
        taken = [s["name"] for s in specs]
        if spec["name"] in taken:
            raise ConfigError(
                f"{KEY}[{index}]: a second task named {spec['name']!r} (its metrics are "
                f"eval/{spec['name']}_acc); tell them apart with name:"
            )
        specs.append(spec)
    return specs


def _check_entry(entry: Any, where: str) -> dict[str, Any]:
    if isinstance(entry, str):  # `eval_tasks: [hellaswag]`
        entry = {"task": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping such as {{task: hellaswag, limit: 200}}, got {entry!r}")
    for key in entry:
        if key not in SPEC_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r}{suggest(str(key), SPEC_KEYS)}; "
                f"a task takes {', '.join(SPEC_KEYS)}"
            )
    task = entry.get("task")
    if task not in TASK_NAMES:
        hint = suggest(str(task), TASK_NAMES)
        raise ConfigError(f"{where}.task must be one of {', '.join(TASK_NAMES)}, got {task!r}{hint}")
    data = entry.get("data")
    if data is not None and (not isinstance(data, str) or not data.strip()):
        raise ConfigError(f"{where}.data must be the path of a jsonl file, got {data!r}")
    if data is None and task in NEEDS_DATA:
        raise ConfigError(f"{where}: task {task} needs data: the path of its jsonl file")
    limit = entry.get("limit", DEFAULT_LIMIT)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        rule = "a whole number >= 1 (or null for every example)"
        raise ConfigError(f"{where}.limit must be {rule}, got {limit!r}")
    name = entry.get("name") or (Path(data).stem if data is not None and task in NEEDS_DATA else task)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}.name must be letters, digits, '_', '.' or '-', got {name!r}")
    return {"task": task, "data": data, "limit": limit, "name": name}


__all__ = ["DEFAULT_LIMIT", "TASK_NAMES", "check_eval_tasks"]
