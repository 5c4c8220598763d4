"""Untrusted files and versions: a checkpoint carrying code is refused everywhere, never run, and a
torch too old to load checkpoints safely is refused when nima is imported."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import model_args

import nima
from nima.cli import main as nima_main

ROOT = Path(__file__).resolve().parents[1]
TINY = [*model_args(), "--training.precision=fp32", "--training.batch_size=4", "--training.eval_every=0"]


class OpenPayload:
    """Unpickling this calls ``open(marker, "w")``: the file appears if anything runs it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class SystemPayload(OpenPayload):
    """Unpickling this runs a shell command that creates the marker."""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


KINDS = ["zip-open", "zip-system", "legacy-open", "pickle-open"]


def crafted_checkpoint(path: Path, marker: Path, real: Path, kind: str = "zip-open") -> Path:
    """A real Nima checkpoint with a payload tucked into its training config: in torch's zip
    format, in its legacy format, or as a bare pickle."""
    ckpt = torch.load(real, map_location="cpu", weights_only=True)
    payload = SystemPayload(marker) if kind == "zip-system" else OpenPayload(marker)
    ckpt["training_config"] = {**ckpt["training_config"], "note": payload}
    if kind == "pickle-open":
        path.write_bytes(pickle.dumps(ckpt, protocol=2))
    else:
        torch.save(ckpt, path, _use_new_zipfile_serialization=kind != "legacy-open")
    return path


@pytest.fixture(scope="module")
def real_checkpoint(session_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "run"
    result = train("--training.max_steps=2", f"--training.output_dir={out}", data_dir=session_data_dir)
    assert result.returncode == 0, result.stderr
    return out / "checkpoints" / "step_2.pt"


def train(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NIMA_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "scripts/train.py", "--config", "configs/cpu_quick.yaml", *TINY, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def assert_refused(code: int, out: str, err: str, path: Path, payload: str = "io.open") -> None:
    """Exit 2, one line: refused, naming the first callable the file would have run."""
    assert code == 2, err
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    refused = f"error: {path} was refused: it holds pickled code or objects ({payload}"
    assert lines[0].startswith(refused), lines[0]


@pytest.mark.parametrize("kind", KINDS)
def test_the_payload_is_live(kind: str, real_checkpoint: Path, tmp_path: Path) -> None:
    # The proof that the other tests mean something: an unsafe load runs the payload.
    marker = tmp_path / "MARKER"
    evil = crafted_checkpoint(tmp_path / "evil.pt", marker, real_checkpoint, kind)
    unsafe = f"import pickle, torch; torch.load({str(evil)!r}, weights_only=False)"
    if kind == "pickle-open":
        unsafe = f"import pickle; pickle.loads(open({str(evil)!r}, 'rb').read())"
    subprocess.run([sys.executable, "-c", unsafe], check=True, timeout=120)
    assert marker.exists()


@pytest.mark.parametrize("command", ["eval", "generate"])
@pytest.mark.parametrize("kind", KINDS)
def test_eval_and_generate_refuse_a_checkpoint_with_code(
    command, kind, real_checkpoint, tmp_path, capsys
) -> None:
    marker = tmp_path / "MARKER"
    evil = crafted_checkpoint(tmp_path / "evil.pt", marker, real_checkpoint, kind)
    code = nima_main([command, "--checkpoint", str(evil), "--device", "cpu"])
    captured = capsys.readouterr()
    # (a bare pickle's tensors come first, and torch's own rebuild function is refused first too)
    payload = {"zip-system": f"{os.system.__module__}.system", "pickle-open": ""}.get(kind, "io.open")
    assert_refused(code, captured.out, captured.err, evil, payload)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("option", ["--checkpoint", "--resume", "--init_from"])
def test_train_refuses_a_checkpoint_with_code(option, real_checkpoint, tmp_path, session_data_dir) -> None:
    marker = tmp_path / "MARKER"
    out = tmp_path / "run"
    if option == "--resume":  # the newest step_N.pt of the run is the crafted one
        shutil.copytree(real_checkpoint.parent.parent, out)
        evil = crafted_checkpoint(out / "checkpoints" / "step_4.pt", marker, real_checkpoint)
        args = ["--resume"]
    else:
        evil = crafted_checkpoint(tmp_path / "evil.pt", marker, real_checkpoint)
        args = [option, str(evil)]
    result = train(*args, "--training.max_steps=4", f"--training.output_dir={out}", data_dir=session_data_dir)
    assert_refused(result.returncode, result.stdout, result.stderr, evil)
    assert not marker.exists()
    assert evil.is_file()  # refused, not deleted: the user decides what to do with it


# ---------------------------------------------------------------------------------------- torch floor


@pytest.mark.parametrize("version", ["2.10.0", "2.10.0+cu126", "2.11.0a0+git1234", "2.13.0+cpu", "3.0.0"])
def test_torch_at_or_above_the_floor_is_accepted(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "__version__", version)
    nima.check_torch_version()  # reads torch.__version__


@pytest.mark.parametrize("version", ["2.9.1", "2.4.0+cpu", "1.13.1", "2.9.0a0", "unknown"])
def test_torch_below_the_floor_is_refused(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "__version__", version)
    with pytest.raises(nima.TorchVersionError) as caught:
        nima.check_torch_version()
    message = str(caught.value)
    assert message.startswith(f"Nima needs torch >= 2.10 (found {version}): ")
    assert "pip install --upgrade torch" in message and "\n" not in message
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, nima.errors.NimaError)


@pytest.mark.parametrize(
    "entry",
    [
        "runpy.run_path('scripts/train.py', run_name='__main__')",
        "from nima.cli import main; sys.exit(main())",
    ],
    ids=["scripts/train.py", "nima"],
)
def test_an_old_torch_is_one_error_line_at_the_command_line(entry: str) -> None:
    # torch reports an old version before nima is imported: the command ends with one line, exit 2.
    old = "import runpy, sys, torch; torch.__version__ = '2.9.1'; sys.argv = ['x', 'train', '--help']"
    result = subprocess.run(
        [sys.executable, "-c", f"{old}; {entry}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("error: Nima needs torch >= 2.10 (found 2.9.1): ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
