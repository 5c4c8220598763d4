"""A new run never overwrites, or mixes with, an earlier run left in its output folder.

Runs share folders: the guide's base config and a Trainer built from Python both write to
``experiments``, and running the same command again starts a new run where the last one was. A
run starting from step 0 would overwrite the earlier run's ``step_N.pt`` and ``best_model.pt``,
append to its ``metrics.jsonl``, and its report and plots would mix the two. So before a new run
writes anything, the earlier run's files move, whole, to ``<output_dir>/earlier_runs/<time>/``
(a rename: nothing is copied), and the run says where they went.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from nima.checkpoint import newest_checkpoint

EARLIER_RUNS = "earlier_runs"
RUN_FILES = ("checkpoints", "logs", "config.yaml", "results.json", "report.md", "loss.png")
"""What a run writes in its output folder (its data, and other runs' folders inside it, stay)."""


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
