"""The example notebooks: generated from notebooks/build_notebooks.py, and they run top to bottom.

Each notebook is executed with nbclient on a Jupyter kernel running this test's Python (the
project's virtual environment), in a checkout laid out as a user has it but built in a temporary
folder (links to this checkout's code), so whatever it writes lands outside the real checkout. It
runs the way a user meets it, started in its own folder ``notebooks/`` (as Jupyter does) with tiny
Shakespeare already in ``experiments/data`` (as ``./run.sh demo`` leaves it) and no mirror; and
started in the checkout's root with ``NIMA_DATA_MIRROR`` (as ``run.sh`` sets it). Either way it must
work from the checkout's root: data and runs under ``<checkout>/experiments``.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ["training_basics.ipynb", "advanced_training.ipynb", "hyperparameter_tuning.ipynb"]


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOKS / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_what_the_builder_writes(name):
    assert (NOTEBOOKS / name).read_text(encoding="utf-8") == _builder().render(name), (
        f"notebooks/{name} is out of date: run `python notebooks/build_notebooks.py`"
    )


def _outputs(nb) -> str:
    # Stream text is joined as is: a busy kernel may flush one printed line in several chunks.
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") or str(out.get("data", {}).get("text/plain", "")) + "\n")
    return "".join(texts)


def _user_checkout(tmp_path: Path, name: str) -> Path:
    """A checkout in ``tmp_path``: this one's code and configs (linked) and the notebook (copied)."""
    root = tmp_path / "checkout"
    (root / "notebooks").mkdir(parents=True)
    for entry in ("pyproject.toml", "nima", "models", "data", "training", "configs"):
        (root / entry).symlink_to(REPO / entry)
    shutil.copy(NOTEBOOKS / name, root / "notebooks" / name)
    return root


# Every notebook as a user opens it; the root start (run.sh's mirror) once, for the cheapest.
CASES = [(name, "notebooks") for name in NAMES] + [("training_basics.ipynb", "root")]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "start"), CASES)
def test_notebook_runs(name, start, tmp_path, monkeypatch, tiny_shakespeare_file):
    root = _user_checkout(tmp_path, name)
    monkeypatch.delenv("NIMA_DATA_DIR", raising=False)  # data: <checkout>/experiments/data
    if start == "notebooks":
        # As ./run.sh demo leaves it; without the notebook finding the root, it would download.
        data = root / "experiments" / "data" / "tiny_shakespeare"
        data.mkdir(parents=True)
        (data / "input.txt").symlink_to(tiny_shakespeare_file)
    else:
        monkeypatch.setenv("NIMA_DATA_MIRROR", str(tiny_shakespeare_file.parents[1]))
    # The kernel is a process of its own, out of conftest's reach: a dead proxy keeps it offline.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    cwd = root / "notebooks" if start == "notebooks" else root
    monkeypatch.chdir(cwd)
    nb = nbformat.read(root / "notebooks" / name, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    text = _outputs(nb)
    assert "Traceback" not in text
    assert "IProgress not found" not in text  # tqdm's warning when ipywidgets is missing
    if name == "training_basics.ipynb":
        assert "perplexity" in text and "ROMEO:" in text
    if name == "advanced_training.ipynb":
        assert "identical weights after resume: True" in text
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
