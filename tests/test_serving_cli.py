"""``nima serve`` as a command: the line saying where it listens, a clean end on SIGTERM/SIGINT
with in-flight streams ended by an error event, one-line errors, and Nima without the serve extra."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from inference_helpers import save_checkpoint
from tiny import model_config

from nima.cli import main as nima
from nima.data.tokenizer import ByteTokenizer
from nima.models import create_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def long_context_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Context 1024 and no end-of-text token: a 1000-token answer takes about a second, so a
    signal reliably arrives mid-stream."""
    torch.manual_seed(0)
    tok = ByteTokenizer(with_eot=False)
    model = create_model(model_config(tok.vocab_size, max_seq_len=1024, init_std=0.3))
    return save_checkpoint(model.eval(), tok, tmp_path_factory.mktemp("ckpt") / "long")


def start_serve(checkpoint: Path, *more: str) -> tuple[subprocess.Popen, str]:
    """``nima serve`` in a child process on a free port; returns it and its URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nima.cli",
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--port",
            "0",
            "--device",
            "cpu",
            "--threads",
            "1",
            *more,
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stderr.readline()
    found = re.search(r"at (http://127\.0\.0\.1:\d+) ", line)
    if not found:
        proc.kill()
        pytest.fail(f"nima serve did not say where it listens: {line!r} {proc.stderr.read()}")
    assert "curl" in line and line.count("\n") == 1
    return proc, found.group(1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_in_flight_streams_with_an_error_and_the_server_exits(long_context_checkpoint, sig):
    proc, url = start_serve(long_context_checkpoint, "--max_batch", "2")
    try:
        body = {"prompt": "Hello", "max_tokens": 1000, "stream": True, "temperature": 1.0}
        events = []
        with httpx.Client(timeout=20, trust_env=False) as client:
            with client.stream("POST", f"{url}/v1/completions", json=body) as response:
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    events.append(line[6:])
                    if len(events) == 3:
                        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
        last = json.loads(events[-1])
        assert "shutting down" in last["error"]["message"] and last["error"]["type"] == "server_error"
        assert "[DONE]" not in events and len(events) < 1000
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_server_listens_on_loopback_by_default(long_context_checkpoint):
    proc, url = start_serve(long_context_checkpoint)
    try:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/health", trust_env=False).json()["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_a_busy_port_is_one_line(long_context_checkpoint, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = nima(["serve", "--checkpoint", str(long_context_checkpoint), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot listen on 127.0.0.1:") and err.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max_batch", "0"], "--max_batch 0 must be at least 1"),
        (["--port", "70000"], "--port 70000"),
        (["--checkpoint_typo", "x"], "unrecognized arguments"),
    ],
)
def test_bad_options_are_one_line(long_context_checkpoint, capsys, args, message):
    code = nima(["serve", "--checkpoint", str(long_context_checkpoint), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_nima_works_without_the_serve_extra_and_says_how_to_get_it():
    code = (
        "import sys\n"
        "sys.modules.update(starlette=None, uvicorn=None)\n"  # as if not installed
        "import nima, nima.models, nima.inference, nima.serving\n"
        "from nima.cli import main\n"
        "sys.exit(main(['serve', '--checkpoint', 'missing.pt']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: nima serve needs starlette, uvicorn, which are not installed: pip install 'nima[serve]'"
    ]


def test_the_listening_socket_is_tcp_so_replies_are_not_held_back():
    from nima.serving.server import bind

    # asyncio turns Nagle's algorithm off only on sockets that say IPPROTO_TCP; with it on, each
    # reply on a keep-alive connection waited 40 ms for a delayed ACK.
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
