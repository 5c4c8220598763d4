"""The example notebooks: committed executed, as ``python notebooks/build_notebooks.py --execute``
writes them, and they run top to bottom today.

The committed files must have exactly the builder's cells (sources and ids), and outputs that show
each picture listed in :data:`FIGURES`, with no error, nothing on stderr (warnings, progress bars),
no progress-bar noise and no volatile metadata (timings, kernel versions). Numbers in the outputs
differ from machine to machine and run to run, so they are not compared.

Each notebook is also executed with nbclient on a Jupyter kernel running this test's Python (the
project's virtual environment), the way ``--execute`` runs it, in a checkout laid out as a user has
it but built in a temporary folder (links to this checkout's code), so whatever it writes lands
outside the real checkout. It runs the way a user meets it, started in its own folder
``notebooks/`` (as Jupyter does) with tiny Shakespeare already in ``experiments/data`` (as
``./run.sh demo`` leaves it) and no mirror; and started in the checkout's root with
``NIMA_DATA_MIRROR`` (as ``run.sh`` sets it). Either way it must work from the checkout's root:
data and runs under ``<checkout>/experiments``, and show the same pictures as the committed file.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ["training_basics.ipynb", "advanced_training.ipynb", "hyperparameter_tuning.ipynb"]
REGENERATE = "run `python notebooks/build_notebooks.py --execute`"
# The cells of each notebook that show pictures (ids <notebook>-figure-<name>), and how many.
FIGURES = {
    "training_basics.ipynb": {"loss-curves": 1},
    "advanced_training.ipynb": {"accumulation": 1, "lr-schedules": 1, "early-stopping": 1},
    # Optuna's learning curves, optimization history and parameter importances
    "hyperparameter_tuning.ipynb": {"sweep-plots": 3},
}


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOKS / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = _builder()


def _committed(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _figure_ids(name: str) -> list[str]:
    stem = Path(name).stem.replace("_", "-")
    return [f"{stem}-figure-{figure}" for figure in FIGURES[name]]


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_the_builders_cells(name):
    assert builder.write(builder.strip(_committed(name))) == builder.render(name), (
        f"notebooks/{name} is out of date: {REGENERATE}"
    )


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_executed_and_shows_its_pictures(name):
    nb = _committed(name)
    assert builder.figure_cells(nb) == _figure_ids(name)
    assert builder.problems(nb) == [], f"notebooks/{name}: {REGENERATE}"
    for cell_id, count in zip(_figure_ids(name), FIGURES[name].values(), strict=True):
        cell = next(cell for cell in nb.cells if cell["id"] == cell_id)
        assert len(builder.images(cell)) == count, cell_id
    # Only figure cells show pictures; nothing volatile is kept.
    assert all(not builder.images(cell) for cell in nb.cells if cell["id"] not in _figure_ids(name))
    assert nb.metadata == builder.METADATA
    assert all("execution" not in cell.metadata for cell in nb.cells)


def test_problems_are_found():
    """``problems`` (what --execute refuses to write, and the checks above) sees each kind of noise."""
    nb = builder.build("training_basics.ipynb")
    assert any("was not executed" in p for p in builder.problems(nb))
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
    figure = next(cell for cell in nb.cells if "-figure-" in cell["id"])
    assert builder.problems(nb) == [f"cell {figure['id']} shows no picture"]
    figure.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="step 3/80 |####   | 40%|\r"),
        nbformat.v4.new_output("stream", name="stderr", text="UserWarning: something\n"),
        nbformat.v4.new_output("error", ename="ValueError", evalue="bad", traceback=[]),
    ]
    found = builder.problems(nb)
    assert [p.split(":")[0] for p in found] == [
        f"cell {figure['id']} {what}"
        for what in ("shows a progress bar", "wrote to stderr", "failed", "shows no picture")
    ]


# Every notebook as a user opens it; the root start (run.sh's mirror) once, for the cheapest.
CASES = [(name, "notebooks") for name in NAMES] + [("training_basics.ipynb", "root")]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "start"), CASES)
def test_notebook_runs(name, start, tmp_path, monkeypatch, tiny_shakespeare_file):
    monkeypatch.delenv("NIMA_DATA_DIR", raising=False)  # data: <checkout>/experiments/data
    monkeypatch.delenv("NIMA_DATA_MIRROR", raising=False)
    nb = builder.strip(_committed(name))
    if start == "notebooks":
        # As ./run.sh demo leaves it; without the notebook finding the root, it would download.
        root = builder.user_checkout(tmp_path / "checkout", nb, name, tiny_shakespeare_file)
    else:
        root = builder.user_checkout(tmp_path / "checkout", nb, name, None)
        monkeypatch.setenv("NIMA_DATA_MIRROR", str(tiny_shakespeare_file.parents[1]))
    # The kernel is a process of its own, out of conftest's reach: a dead proxy keeps it offline.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    cwd = root / "notebooks" if start == "notebooks" else root
    monkeypatch.chdir(cwd)
    builder.execute(nb, cwd)  # raises CellExecutionError naming the failing cell
    # What --execute would write: no error or noise, each picture (the committed file's).
    assert builder.problems(nb) == []
    assert builder.figure_cells(nb) == _figure_ids(name)
    text = _outputs(nb)
    assert "Traceback" not in text
    assert "IProgress not found" not in text  # tqdm's warning when ipywidgets is missing
    if name == "training_basics.ipynb":
        assert "perplexity" in text and "ROMEO:" in text
    if name == "advanced_training.ipynb":
        assert "identical weights after resume: True" in text
        # Accumulation: batch 4 x 4 trains like batch 16 (fp32, the same windows per step).
        found = re.search(r"batch 16 and batch 4 x 4, over 40 steps: (\S+)\n", text)
        assert found and float(found[1]) < 1e-3, text
        # Early stopping stops a run that learned: the validation loss fell, then stopped falling.
        found = re.search(r"stopped after (\d+) of (\d+) steps; validation losses: \[(.*?)\]", text)
        assert found, text
        steps, planned = int(found[1]), int(found[2])
        val_losses = [float(v) for v in found[3].split(",")]
        assert steps < planned and min(val_losses) < val_losses[0], found[0]
    if name == "hyperparameter_tuning.ipynb":
        assert "best learning rate" in text
    # Everything under the checkout's experiments/, nothing under notebooks/.
    assert (root / "experiments" / "notebooks").is_dir()
    assert (root / "experiments" / "data" / "tiny_shakespeare" / "char").is_dir()
    assert sorted(p.name for p in (root / "notebooks").iterdir()) == [name]


def _outputs(nb) -> str:
    # Stream text is joined as is: a busy kernel may flush one printed line in several chunks.
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") or str(out.get("data", {}).get("text/plain", "")) + "\n")
    return "".join(texts)
