"""Fuzz every ``nima`` command with bad input: exit 0 or 2, no traceback, no file changed.

Each case is one ``nima <command> ...`` run in this process (``nima.cli.main``, stdout and stderr
captured), with one thing wrong: a damaged copy of a real checkpoint, tokenizer, config, Hugging
Face folder, prepared dataset, run folder or corpus; an option of a random or extreme value; an
output path that cannot be written (the inputs: :mod:`fuzz_inputs`; the cases: :mod:`fuzz_cases`).
Every case must:

- exit with 0 or 2 (any exception escaping ``main`` is a failure: that is what a user sees as a
  traceback), and print no ``Traceback``;
- on exit 2, print at most three lines on stderr, one of them starting with ``error:``;
- change no file that existed before it ran (sha256 of every file of the shared inputs, and of
  the case's own input files, before and after; only what a successful command writes by design,
  such as ``report.md``, may change), and leave nothing behind when a prepare, export, import or
  plot fails;
- finish within a time limit (no endless work started by an extreme value).

Case ``i`` of seed ``s`` is generated from ``(s, i)`` alone, so ``--seed s --case i`` repeats it.

    python benchmarks/fuzz_commands.py --cases 2000          # the long run (docs/reliability.md)
    python benchmarks/fuzz_commands.py --seed 7 --case 123   # one case again, its folder kept

``tests/test_fuzz_commands.py`` runs a short seeded batch in the suite (``NIMA_FUZZ_CASES`` sets
how many).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common import machine, tiny_shakespeare_text
from fuzz_cases import COMMANDS, Case, make_case
from fuzz_inputs import World, build_world, quiet_streams, tree_entries, tree_hashes

CASE_SECONDS = 60
"""A case running longer than this is a failure (endless work started by an extreme value)."""


# ---------------------------------------------------------------------------------- running a case


@dataclasses.dataclass
class Outcome:
    case: Case
    code: int | str
    stdout: str
    stderr: str
    seconds: float
    problems: list[str]


class CaseTimeout(BaseException):
    """A case ran past its time limit (raised by SIGALRM inside the command)."""


@contextlib.contextmanager
def case_environment(folder: Path, stdin: str) -> Iterator[None]:
    """The case's working folder, data folder and stdin; torch threads, signal handlers and the
    environment put back afterwards (a case may change them: --threads, training's handlers)."""
    import torch

    saved_cwd, saved_env = os.getcwd(), dict(os.environ)
    saved_threads, saved_stdin = torch.get_num_threads(), sys.stdin
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    os.chdir(folder)
    os.environ["NIMA_DATA_DIR"] = str(folder / "default_data")
    sys.stdin = io.StringIO(stdin)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(saved_threads)
        sys.stdin = saved_stdin
        for s, handler in saved_signals.items():
            signal.signal(s, handler)


def run_case(case: Case, world: World, folder: Path, world_hashes: dict[str, str], limit: float) -> Outcome:
    """Run ``case`` in ``folder`` and check every promise of the module docstring."""
    from nima.cli import main

    before = tree_hashes(folder)
    entries = tree_entries(folder)
    problems: list[str] = []

    def alarm(signum: int, frame: Any) -> None:
        raise CaseTimeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    start = time.perf_counter()
    with case_environment(folder, case.stdin), quiet_streams() as (out, err):
        try:
            code: int | str = main(list(case.argv))
        except SystemExit as exit_:  # argparse's --help
            code = exit_.code if isinstance(exit_.code, int) else 1
        except CaseTimeout:
            code = "timeout"
            problems.append(f"ran past {limit:.0f} s")
        except BaseException as exc:  # what a user would see as a traceback
            code = f"{type(exc).__name__}"
            problems.append("exception escaped: " + "".join(traceback.format_exception(exc))[-3000:])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    seconds = time.perf_counter() - start
    stdout, stderr = out.getvalue(), err.getvalue()
    if isinstance(code, int) and code not in (0, 2):
        problems.append(f"exit code {code}")
    if "Traceback" in stdout + stderr:
        problems.append("a traceback was printed")
    # Lines as a log has them (grep '^error:'): a progress bar's carriage returns do not end one.
    lines = [line for line in stderr.split("\n") if line.strip()]
    if code == 2:
        if len(lines) > 3:
            problems.append(f"{len(lines)} lines on stderr")
        if not any(line.startswith("error: ") for line in lines):
            problems.append("no line starts with 'error: '")
    if world.files() != world_hashes:
        problems.append("a file of the shared inputs changed")
    after = tree_hashes(folder)
    allowed = tuple(case.outputs if code == 0 else case.bookkeeping)
    changed = [p for p, h in before.items() if after.get(p) != h and not p.startswith(allowed)]
    if changed:
        problems.append(f"input files changed: {changed[:5]}")
    if code == 2 and case.command in ("prepare", "export", "import", "plot"):
        new = sorted(tree_entries(folder) - entries - {"default_data"})
        if new:
            problems.append(f"a failed {case.command} left {new[:5]}")
    return Outcome(case, code, stdout, stderr, seconds, problems)


# ---------------------------------------------------------------------------------- a batch


@dataclasses.dataclass
class Report:
    seed: int
    cases: int
    failures: list[Outcome]
    by_command: dict[str, dict[str, int]]
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "benchmark": "fuzz_commands",
            "seed": self.seed,
            "cases": self.cases,
            "failures": len(self.failures),
            "seconds": round(self.seconds, 1),
            "by_command": self.by_command,
        }


def run_batch(
    seed: int,
    cases: int,
    workdir: Path,
    world: World,
    first: int = 0,
    keep: bool = False,
    limit: float = CASE_SECONDS,
    say: Callable[[str], Any] = print,
    verbose: bool = False,
) -> Report:
    """Generate and run ``cases`` cases of ``seed`` (from index ``first``) in ``workdir``, each
    starting from ``world`` (:func:`fuzz_inputs.build_world`)."""
    start = time.perf_counter()
    world_hashes = world.files()
    failures: list[Outcome] = []
    by_command: dict[str, dict[str, int]] = {
        c: {"cases": 0, "exit 0": 0, "exit 2": 0, "failed": 0} for c in COMMANDS
    }
    for index in range(first, first + cases):
        folder = workdir / f"case_{index}"
        folder.mkdir(parents=True)
        case = make_case(seed, index, world, folder)
        outcome = run_case(case, world, folder, world_hashes, limit)
        counts = by_command[case.command]
        counts["cases"] += 1
        if outcome.code in (0, 2):
            counts[f"exit {outcome.code}"] += 1
        if verbose:
            last = (outcome.stderr.strip().splitlines() or [""])[-1]
            command_line = " ".join(case.argv)[:300]
            say(f"[{index}] exit {outcome.code} {outcome.seconds:.1f}s nima {command_line}\n    {last[:300]}")
        if outcome.problems:
            counts["failed"] += 1
            failures.append(outcome)
            say(describe(outcome, seed))
            world_hashes = world.files()  # one damaged world file must not fail every later case
        elif not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return Report(seed, cases, failures, by_command, time.perf_counter() - start)


def describe(outcome: Outcome, seed: int) -> str:
    case = outcome.case
    err = outcome.stderr.strip().splitlines()[-3:]
    return "\n".join(
        [
            f"FAILED case {case.index} (--seed {seed} --case {case.index}): nima {' '.join(case.argv)}",
            f"  inputs: {'; '.join(case.notes) or 'as built'}",
            f"  exit {outcome.code} in {outcome.seconds:.1f} s; problems: {'; '.join(outcome.problems)}",
            *(f"  stderr: {line[:300]}" for line in err),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="how many cases (default 2000)")
    parser.add_argument("--seed", type=int, default=None, help="the seed (default: random, printed)")
    parser.add_argument("--case", type=int, default=None, help="run only this case of the seed (kept)")
    parser.add_argument("--keep", action="store_true", help="keep every case's folder")
    parser.add_argument("--verbose", action="store_true", help="print every case and its last stderr line")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to work (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    text = tiny_shakespeare_text().read_text(encoding="utf-8")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nima_fuzz_"))
    os.environ.setdefault("NIMA_DATA_MIRROR", str(tiny_shakespeare_text().parent.parent))
    first, count = (args.case, 1) if args.case is not None else (0, args.cases)
    print(f"fuzz: seed {seed}, {count} case(s), in {workdir}\nmachine: {machine()}", flush=True)
    world = build_world(workdir / "world", text)
    report = run_batch(
        seed,
        count,
        workdir,
        world,
        first=first,
        keep=args.keep or args.case is not None,
        verbose=args.verbose,
    )
    summary = {
        **report.summary(),
        "total_seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
    }
    width = max(map(len, COMMANDS))
    for command, counts in report.by_command.items():
        print(
            f"  {command:<{width}}  {counts['cases']:5d} cases  exit 0: {counts['exit 0']:5d}  "
            f"exit 2: {counts['exit 2']:5d}  failed: {counts['failed']}"
        )
    print(json.dumps(summary))
    if not args.keep and args.case is None and not report.failures:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
