"""The fuzz test: every ``nima`` command fed generated bad input, in the suite.

The cases and the checks are those of ``benchmarks/fuzz_commands.py`` (every case: exit 0 or 2, no
traceback, at most three stderr lines with an ``error:`` one on exit 2, no existing file changed);
here a fixed seed runs a short batch, so that a failure repeats. ``NIMA_FUZZ_CASES`` sets how many
(default 250: about 20 s on 2 cores) and ``NIMA_FUZZ_SEED`` the seed; the long run is
``python benchmarks/fuzz_commands.py --cases 2000``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
CASES = int(os.environ.get("NIMA_FUZZ_CASES", "250"))
SEED = int(os.environ.get("NIMA_FUZZ_SEED", "30"))


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory, tiny_shakespeare_file: Path):
    """The fuzz modules (imported as `python benchmarks/fuzz_commands.py` has them: by name, from
    their folder) and the world of good files every case starts from."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))
        import fuzz_cases
        import fuzz_commands
        import fuzz_inputs

    text = tiny_shakespeare_file.read_text(encoding="utf-8")
    world = fuzz_inputs.build_world(tmp_path_factory.mktemp("fuzz") / "world", text)
    return fuzz_cases, fuzz_commands, world


def test_no_command_prints_a_traceback_or_changes_a_file_on_bad_input(fuzz, tmp_path: Path) -> None:
    _, fuzz_commands, world = fuzz
    lines: list[str] = []
    report = fuzz_commands.run_batch(SEED, CASES, tmp_path, world, say=lines.append)
    assert not report.failures, f"{len(report.failures)} of {CASES} cases failed:\n\n" + "\n\n".join(lines)
    counts = report.by_command
    assert all(c["cases"] > 0 for c in counts.values()), counts  # every command was tried
    assert sum(c["exit 2"] for c in counts.values()) > CASES // 3, counts  # mostly refusals ...
    assert sum(c["exit 0"] for c in counts.values()) > CASES // 10, counts  # ... and some that work


def test_a_case_is_the_same_whenever_it_is_generated(fuzz, tmp_path: Path) -> None:
    # `--seed S --case I` repeats a failure found in a long run: a case depends on (S, I) alone.
    fuzz_cases, _, world = fuzz
    made = []
    for attempt in ("a", "b"):
        folder = tmp_path / attempt
        folder.mkdir()
        case = fuzz_cases.make_case(3, 41, world, folder)
        files = sorted(
            (p.relative_to(folder).as_posix(), p.read_bytes()) for p in folder.rglob("*") if p.is_file()
        )
        made.append((case.command, [a.replace(str(folder), "<case>") for a in case.argv], case.notes, files))
    assert made[0] == made[1]
