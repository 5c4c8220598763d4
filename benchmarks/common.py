"""What the benchmarks share: where things are, what this machine is, timing, and result tables.

Every benchmark runs as a script from the checkout, ``python benchmarks/<name>.py ...``: Python
puts this folder first on ``sys.path``, so the scripts import this module by its plain name
(``from common import ROOT, machine``) and nothing edits ``sys.path``. Nima itself is the installed
package (``pip install -e .``, as ``./run.sh`` sets up).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

# ---------------------------------------------------------------------------------- paths

BENCH = Path(__file__).resolve().parent
"""This folder: the benchmark scripts."""
ROOT = BENCH.parent
"""The checkout (``configs/``, ``scripts/``); child processes run from here."""


def script(name: str) -> Path:
    """The path of benchmark ``name`` (``"_nima_throughput"``), to run it as a child process."""
    return BENCH / f"{name}.py"


def command_line(name: str, argv: Sequence[str] = ()) -> str:
    """How a user types benchmark ``name`` with ``argv``: ``python benchmarks/<name>.py ...``."""
    return shlex.join(["python", f"benchmarks/{name}.py", *argv])


def shared_dir() -> Path:
    """``$NIMA_SHARED_DIR`` or the ``shared`` folder next to the checkout."""
    env = os.environ.get("NIMA_SHARED_DIR")
    return Path(env) if env else ROOT.parent / "shared"


def reference_path() -> Path:
    """The textbook PyTorch loop every speed goal is measured against: ``bench/reference_gpt.py``."""
    return shared_dir() / "bench" / "reference_gpt.py"


def tiny_shakespeare_text() -> Path:
    """The shared copy of tiny Shakespeare's ``input.txt``."""
    return shared_dir() / "data" / "tiny_shakespeare" / "input.txt"


def find_reference(explicit: str | None) -> Path:
    """``explicit`` or the shared ``reference_gpt.py``; stops with a message when it is missing."""
    path = Path(explicit) if explicit else reference_path()
    if not path.is_file():
        raise SystemExit(f"reference not found at {path}; pass --reference or set NIMA_SHARED_DIR")
    return path


def find_text(explicit: str | None) -> Path:
    """``explicit`` or the shared tiny Shakespeare; stops with a message when it is missing."""
    path = Path(explicit) if explicit else tiny_shakespeare_text()
    if not path.is_file():
        raise SystemExit(f"tiny Shakespeare not found at {path}; pass --text")
    return path


def find_tiny_shakespeare() -> Path | None:
    """tiny Shakespeare's ``input.txt`` wherever a copy is: the data mirror, the data folder, the
    shared folder or the checkout's ``experiments/data`` (None when there is none)."""
    candidates = [
        os.environ.get("NIMA_DATA_MIRROR"),
        os.environ.get("NIMA_DATA_DIR"),
        str(ROOT.parent / "shared" / "data"),
        str(ROOT / "experiments" / "data"),
    ]
    for root in filter(None, candidates):
        path = Path(root) / "tiny_shakespeare" / "input.txt"
        if path.is_file():
            return path
    return None


def load_reference(path: Path | None = None) -> ModuleType:
    """``reference_gpt.py`` as a module (its ``GPT`` class), loaded from its file."""
    spec = importlib.util.spec_from_file_location("reference_gpt", path or reference_path())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_tiny_shakespeare(data_dir: Path, text: str | None) -> None:
    """Char-level tiny Shakespeare in ``data_dir`` (before any timing), from ``text`` or the
    shared copy when the folder has no ``tiny_shakespeare/input.txt`` yet."""
    from nima.data import prepare as prepare_data

    target = data_dir / "tiny_shakespeare" / "input.txt"
    if not target.exists():
        source = Path(text) if text else tiny_shakespeare_text()
        if not source.is_file():
            raise SystemExit(f"tiny Shakespeare not found at {source}; pass --text or --data_dir")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source.resolve())
    prepare_data("tiny_shakespeare", "char", data_dir=data_dir, quiet=True)


# ---------------------------------------------------------------------------------- the reference recipe

# The reference recipe, as Nima config sections (shape, batch and optimizer settings).
REFERENCE_SHAPE: dict[str, dict[str, Any]] = {
    "model": {
        "arch": "gpt2",
        "vocab_size": 65,
        "d_model": 128,
        "n_heads": 4,
        "n_layers": 4,
        "d_ff": 512,
        "max_seq_len": 64,
        "dropout": 0.0,
        "bias": True,
        "tie_embeddings": True,
    },
    "training": {
        "batch_size": 12,
        "learning_rate": 1e-3,
        "min_lr": 1e-4,
        "warmup_steps": 100,
        "lr_scheduler_type": "cosine",
        "weight_decay": 0.1,
        "betas": [0.9, 0.99],
        "gradient_clip": 1.0,
        "precision": "fp32",
        "device": "cpu",
    },
    "data": {"dataset": "tiny_shakespeare", "tokenizer": "char"},
}


def reference_shape() -> dict[str, dict[str, Any]]:
    """A copy of :data:`REFERENCE_SHAPE` (one dict per section) for a run to add its settings to."""
    return {section: dict(values) for section, values in REFERENCE_SHAPE.items()}


# ---------------------------------------------------------------------------------- the machine


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_avx512_bf16() -> bool:
    """Whether the CPU reports bf16 instructions (``avx512_bf16`` in /proc/cpuinfo's flags)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return "avx512_bf16" in line.split(":", 1)[1].split()
    except OSError:
        pass
    return False


def machine() -> str:
    """This machine in one line: CPU model, whether it has avx512_bf16, cores, torch version (and
    threads, where this process uses torch), and the load average (figures on a shared machine
    depend on it).

    It never imports torch itself: a process that starts children to measure them (their peak
    memory counts what the parent held when it started them) stays as small as it was.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        version = f"torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    else:
        try:
            version = f"torch {importlib.metadata.version('torch')}"
        except importlib.metadata.PackageNotFoundError:
            version = "no torch"
    bf16 = "with" if has_avx512_bf16() else "no"
    load = os.getloadavg()[0]
    return f"{cpu_name()}, {bf16} avx512_bf16, {os.cpu_count()} cpus, {version}, load {load:.2f}"


def utc_now() -> str:
    """The date and time for a result: ``2026-12-02 14:05 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


# ---------------------------------------------------------------------------------- timing


class Clock:
    """Wall time, CPU time of this process and its minor page faults since ``start()``."""

    def start(self) -> None:
        self.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float, int]:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.faults


def best_of(fn: Callable[[], Any], repeats: int = 3) -> float:
    """The fastest of ``repeats`` calls of ``fn``, in wall seconds (load only ever adds time)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ---------------------------------------------------------------------------------- results


def summary(values: list[float]) -> dict[str, float]:
    """The median of per-pair (or per-round) ratios, with its range and count."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s: dict[str, float], unit: str = "x") -> str:
    """A :func:`summary` as a ratio: ``1.012x (min 1.001, max 1.019, 9 pairs)``."""
    return f"{s['median']:.3f}{unit} (min {s['min']:.3f}, max {s['max']:.3f}, {s['n']} pairs)"


def table_header(header: Sequence[str]) -> str:
    """A Markdown table's header and rule lines (each ending in a newline)."""
    return "| " + " | ".join(header) + " |\n" + "|" + "---|" * len(header) + "\n"


def table_row(cells: Iterable[Any]) -> str:
    """One Markdown table row (no newline)."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def print_table(header: Sequence[str], rows: Iterable[Iterable[Any]]) -> None:
    """Print a Markdown table, after an empty line."""
    print("\n" + table_header(header), end="")
    for cells in rows:
        print(table_row(cells))


def append_table_rows(path: Path, header: Sequence[str], rows: str) -> None:
    """Append ``rows`` (Markdown table rows, each ending in a newline) to the table in ``path``,
    writing the header first when the file is new or empty (``--record FILE``)."""
    new = not path.is_file() or path.stat().st_size == 0
    with path.open("a", encoding="utf-8") as handle:
        handle.write((table_header(header) if new else "") + rows)
