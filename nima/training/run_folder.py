"""A new run never overwrites, or mixes with, an earlier run left in its output folder.

Runs share folders: the guide's base config and a Trainer built from Python both write to
``experiments``, and running the same command again starts a new run where the last one was. A
run starting from step 0 would overwrite the earlier run's ``step_N.pt`` and ``best_model.pt``,
append to its ``metrics.jsonl``, and its report and plots would mix the two. So before a new run
writes anything, the earlier run's files move, whole, to ``<output_dir>/earlier_runs/<time>/``
(a rename: nothing is copied), and the run says where they went.

:class:`RunFolder` owns that timing: the assembler claims the folder (it must be writable, found
before any work, not at the first save), and the move happens when training begins at step 0, so
that a Trainer built from Python can still load a checkpoint of the earlier run first.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nima.checkpoint import newest_checkpoint
from nima.errors import ConfigError
from nima.reporting.runs import write_run_config

EARLIER_RUNS = "earlier_runs"
RUN_FILES = ("checkpoints", "logs", "config.yaml", "results.json", "report.md", "loss.png")
"""What a run writes in its output folder (its data, and other runs' folders inside it, stay)."""


class RunFolder:
    """``training.output_dir``: its ``checkpoints/`` and ``logs/``, and what a run writes first."""

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir)
        self.checkpoints = self.path / "checkpoints"
        self.logs = self.path / "logs"

    @classmethod
    def claim(cls, output_dir: str | Path) -> RunFolder:
        """The folder, checked: ConfigError unless the run can write there (``checkpoints/`` and
        ``logs/`` are created, and a file is written and removed in each)."""
        folder = cls(output_dir)
        for sub in (folder.checkpoints, folder.logs):
            try:
                sub.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=sub):
                    pass
            except OSError as err:
                where = f" ({err.filename})" if err.filename and str(err.filename) != str(sub) else ""
                raise ConfigError(
                    f"training.output_dir {output_dir} cannot be written: {sub}: "
                    f"{err.strerror or err}{where}; choose a writable folder with --training.output_dir=DIR"
                ) from None
        return folder

    def begin(
        self, step: int, say: Callable[[str], Any], config: Any = None, command: str | None = None
    ) -> None:
        """Rank 0, as training begins: a new run (step 0) first sets an earlier run's files aside;
        then ``config.yaml`` gets the run's config (a RunConfig, when the run was built from one)."""
        if step == 0 and (note := set_aside_earlier_run(self.path)):
            say(note)
        if config is not None:
            write_run_config(self.path, config, command)


def set_aside_earlier_run(output_dir: str | Path) -> str | None:
    """Move an earlier run's files (a checkpoint or logged metrics) out of the way of a new run
    in ``output_dir``; returns the line that says where they went, None when there was none."""
    folder = Path(output_dir)
    has_checkpoint = any((folder / "checkpoints").glob("*.pt"))
    if not has_checkpoint and not (folder / "logs" / "metrics.jsonl").is_file():
        return None
    newest = newest_checkpoint(folder)  # what --resume would have taken
    target = _new_folder(folder / EARLIER_RUNS)
    for name in RUN_FILES:
        if (folder / name).exists():
            os.replace(folder / name, target / name)
    line = f"note: {folder} held an earlier run; this new run moved its files to {target}"
    if newest is not None:
        line += f" (to go on with that run instead: --checkpoint {target / 'checkpoints' / newest.name})"
    return line


def _new_folder(parent: Path) -> Path:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    for n in range(1, 1000):
        path = parent / (stamp if n == 1 else f"{stamp}_{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent} has no free name for {stamp}")
