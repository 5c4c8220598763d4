"""The architecture docs/architecture.md states holds in the source: stages import only from the
stages before them, imports sit at the top, the run is assembled in one place, and no module
grows past a screenful of screens."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nima"

# Imports of nima modules that may sit inside a function, and why (the docs say the same).
LAZY_NIMA_IMPORTS = {
    "nima/data/__init__.py": "torch-backed names load on first use: nima prepare never imports torch",
    "nima/evaluation/cli.py": "--harness_tasks loads the lm-evaluation-harness adapter: lm-eval is optional",
    "nima/evaluation/lm_eval_cli.py": "lm-eval's command with the adapter: no lm-eval is an error line",
}
MAX_LINES = 600
MAX_LINES_TUNING = 400


def stage_folders() -> list[str]:
    """The stage table of docs/architecture.md, in order: each row's ``nima/...`` path."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = text[text.index("| stage | folder |") : text.index("\n\n", text.index("| stage | folder |"))]
    folders = []
    for row in table.splitlines()[2:]:
        found = re.search(r"`(nima/[^`]*)`", row.split("|")[2])
        assert found, f"a stage row without a nima/ path: {row}"
        folders.append(found.group(1))
    return folders


def stage_of(path: str, folders: list[str]) -> int:
    """The row of the stage that ``path`` (``nima/x/y.py``) belongs to."""
    for index, folder in enumerate(folders):
        if path == folder or (folder.endswith("/") and path.startswith(folder)):
            return index
    raise AssertionError(f"{path} belongs to no stage of docs/architecture.md")


def module_path(name: str) -> str:
    """``nima.training.trainer`` -> ``nima/training/trainer.py`` (a package: its ``__init__.py``)."""
    parts = name.split(".")
    as_file = PACKAGE.parent.joinpath(*parts).with_suffix(".py")
    if as_file.is_file():
        return as_file.relative_to(ROOT).as_posix()
    return (PACKAGE.parent.joinpath(*parts) / "__init__.py").relative_to(ROOT).as_posix()


def nima_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported nima module, line, at the module's top level) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(name, node.lineno, id(node) in top) for name in names if name.split(".")[0] == "nima"]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_stage_table_names_every_folder_of_the_package() -> None:
    folders = stage_folders()
    for path in MODULES:
        stage_of(path.relative_to(ROOT).as_posix(), folders)  # raises for a module of no stage
    assert len(folders) == len(set(folders))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_a_module_imports_only_from_its_stage_and_the_stages_before_it(path: Path) -> None:
    folders = stage_folders()
    here = path.relative_to(ROOT).as_posix()
    own = stage_of(here, folders)
    later = []
    for name, line, _ in nima_imports(path):
        target = stage_of(module_path(name), folders)
        if target > own:
            later.append(f"{here}:{line} imports {name} ({folders[target]} comes after {folders[own]})")
    assert not later, "\n".join(later)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_nima_imports_sit_at_the_top_of_the_module(path: Path) -> None:
    here = path.relative_to(ROOT).as_posix()
    inside = [f"{here}:{line} imports {name}" for name, line, top in nima_imports(path) if not top]
    if here in LAZY_NIMA_IMPORTS:
        return
    assert not inside, "\n".join(inside)


def test_the_checker_finds_an_import_from_a_later_stage(tmp_path: Path) -> None:
    """The stage check can fail: a data module importing the Trainer is caught."""
    folders = stage_folders()
    bad = tmp_path / "bad.py"
    bad.write_text("from nima.training.trainer import Trainer\n\ndef f():\n    import nima.tuning\n")
    imports = nima_imports(bad)
    expected = [("nima.training.trainer", True), ("nima.tuning", False)]
    assert [(name, top) for name, _, top in imports] == expected
    data_stage = stage_of("nima/data/loader.py", folders)
    assert all(stage_of(module_path(name), folders) > data_stage for name, _, _ in imports)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_is_too_long_to_read(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    limit = MAX_LINES_TUNING if path.parent.name == "tuning" else MAX_LINES
    assert lines <= limit, f"{path.relative_to(ROOT)} has {lines} lines (at most {limit})"


# Each step of a run's assembly, called in exactly one place of nima/: the assembler.
ASSEMBLY_STEPS = [
    "init_distributed(",
    "RunFolder.claim(",
    "prepare_data_once_per_node(",
    "seed_everything(",
    "Runtime.for_training(",
    "fit_batch(",
    "plan_memory(",
    "build_loaders(",
    "DataCursor(",
    "build_optimizer(",
    "build_scheduler(",
    "TrainStep(",
    "Meter(",
    "Validator(",
    "TaskEvaluator.build(",
    "Checkpointer(",
    "run_metadata(",
    "monitoring_callbacks(",
]


@pytest.mark.parametrize("call", ASSEMBLY_STEPS)
def test_each_assembly_step_has_one_call_site(call: str) -> None:
    sites = []
    for path in MODULES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            if re.search(rf"(?<![\w.]){re.escape(call)}|\.{re.escape(call)}", code) and not re.match(
                r"\s*(def|class) ", code
            ):
                sites.append(f"{path.relative_to(ROOT)}:{number}")
    assert len(sites) == 1 and sites[0].startswith("nima/training/assembly.py"), sites


def test_nothing_sets_attributes_on_a_trainer_from_outside() -> None:
    pattern = re.compile(r"\b(trainer|run\.trainer)\.[a-z_]+\s*=[^=]")
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in MODULES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)
