"""The example notebooks: generated from notebooks/build_notebooks.py, and they run top to bottom.

Each notebook is executed with nbclient on a Jupyter kernel running this test's Python (the
project's virtual environment), in a temporary working directory, so whatever it writes lands
outside the checkout.
"""

from __future__ import annotations

import importlib.util
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


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    text = _outputs(nb)
    assert "Traceback" not in text
    if name == "training_basics.ipynb":
        assert "perplexity" in text and "ROMEO:" in text
    if name == "advanced_training.ipynb":
        assert "identical weights after resume: True" in text
        assert "stopped after" in text
    if name == "hyperparameter_tuning.ipynb":
        assert "best learning rate" in text
    assert (tmp_path / "experiments" / "notebooks").is_dir()
