"""Shared test fixtures: the offline tiny Shakespeare, a temporary data directory, no network.

Tests read tiny Shakespeare from ``../shared/data`` (or ``$NIMA_SHARED_DIR/data``) through a
temporary data directory; they never download, never write into ../shared and never leave files in
the checkout.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

# Failed asserts inside training_helpers (start_until) are reported like a test's own.
pytest.register_assert_rewrite("training_helpers")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("NIMA_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()
TINY_SHAKESPEARE = SHARED_DIR / "data" / "tiny_shakespeare" / "input.txt"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test workers on a 2-core machine: one thread each, or they fight over the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_shakespeare_file() -> Path:
    """The offline copy of tiny Shakespeare (read-only)."""
    if not TINY_SHAKESPEARE.is_file():
        pytest.fail(f"tiny Shakespeare not found at {TINY_SHAKESPEARE}; set NIMA_SHARED_DIR to shared/")
    return TINY_SHAKESPEARE


@pytest.fixture(scope="session")
def session_data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_shakespeare_file: Path) -> Path:
    """A data directory holding ``tiny_shakespeare/input.txt`` (a link to the shared copy).

    Session-scoped so that prepared datasets are reused across tests; tests that prepare data
    with unusual settings should use their own ``tmp_path`` instead.
    """
    root = tmp_path_factory.mktemp("nima_data")
    (root / "tiny_shakespeare").mkdir()
    (root / "tiny_shakespeare" / "input.txt").symlink_to(tiny_shakespeare_file)
    return root


@pytest.fixture(scope="module")
def prepared(session_data_dir: Path):
    """Tiny Shakespeare prepared with the char tokenizer in the session data directory."""
    from nima.data import prepare

    return prepare("tiny_shakespeare", "char", data_dir=session_data_dir)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, session_data_dir: Path) -> None:
    """Every test: data under the temporary data dir, and no network at all."""
    monkeypatch.setenv("NIMA_DATA_DIR", str(session_data_dir))
    monkeypatch.delenv("NIMA_DATA_MIRROR", raising=False)

    real_connect = socket.socket.connect

    def _local_only_connect(sock: socket.socket, address, *args, **kwargs):
        # Local sockets stay usable: DataLoader workers (AF_UNIX) and torch.distributed (loopback).
        if sock.family == socket.AF_UNIX or _is_loopback(address):
            return real_connect(sock, address, *args, **kwargs)
        raise OSError(f"network access is disabled in tests (tried to connect to {address!r})")

    monkeypatch.setattr(socket.socket, "connect", _local_only_connect)


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
