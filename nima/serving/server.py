"""Run the app with uvicorn: in the foreground until SIGTERM/SIGINT, or on a background thread.

uvicorn is the usual server for Starlette/FastAPI apps: it speaks HTTP/1.1 with keep-alive and
streaming, and shuts down gracefully. On a signal the engine first fails every waiting and running
request (streams end with an error event), so that the graceful shutdown has nothing to wait for.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nima.errors import ConfigError
from nima.inference.loading import LoadedModel, load_for_inference
from nima.serving.app import create_app
from nima.serving.chat_template import load_chat_template
from nima.serving.engine import Engine
from nima.serving.extra import require_serve_extra
from nima.serving.plans import ServedModel

GRACEFUL_SHUTDOWN_S = 5
"""Longest wait for open connections after a shutdown signal."""


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError:  # the serve extra is not installed: say so in one line
        require_serve_extra()
        raise
    return uvicorn


@dataclass
class ServeSettings:
    """How to serve; the defaults suit one machine."""

    host: str = "127.0.0.1"
    """Address to listen on (loopback only by default; 0.0.0.0 to accept other machines)."""
    port: int = 8000
    """TCP port (0: any free one)."""
    max_batch: int = 8
    """Requests generated together; more wait for a free row."""
    api_key: str | None = None
    """When set, /v1 routes need ``Authorization: Bearer KEY``."""
    model_id: str | None = None
    """The name clients use in ``model`` (default: from the checkpoint's path)."""
    chat_template: str | Path | None = None
    """A Jinja chat template file (default: the tokenizer's own, else the plain transcript)."""


def model_id_for(checkpoint: Path) -> str:
    """``experiments/quick_test/checkpoints/best_model.pt`` -> ``quick_test/best_model``."""
    run = checkpoint.parent.parent.name if checkpoint.parent.name == "checkpoints" else checkpoint.parent.name
    return f"{run}/{checkpoint.stem}" if run else checkpoint.stem


def build_served(loaded: LoadedModel, settings: ServeSettings) -> ServedModel:
    """The engine (started) and everything the routes need, for ``loaded``."""
    if settings.max_batch < 1:
        raise ConfigError(f"--max_batch {settings.max_batch} must be at least 1")
    if settings.api_key is not None and not settings.api_key.strip():
        raise ConfigError("--api_key must not be empty")
    engine = Engine(loaded.model, loaded.tokenizer, max_batch=settings.max_batch).start()
    return ServedModel(
        engine=engine,
        tokenizer=loaded.tokenizer,
        model_id=settings.model_id or model_id_for(Path(loaded.checkpoint_path)),
        context_length=loaded.model.config.max_seq_len,
        chat_template=load_chat_template(loaded.tokenizer_path, settings.chat_template),
        api_key=settings.api_key,
        created=int(time.time()),
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (ConfigError naming the fix when it cannot be had)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConfigError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    # The TCP protocol number, not 0: asyncio turns Nagle's algorithm off only on sockets that say
    # IPPROTO_TCP, and with it on, a keep-alive client waits 40 ms (a delayed ACK) per response.
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}; pick another --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server(served: ServedModel) -> Any:
    uvicorn = _uvicorn()

    class Server(uvicorn.Server):
        """uvicorn, failing the engine's requests first when told to stop, and ending the command
        normally afterwards (uvicorn itself re-raises the signal once it has shut down)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            served.engine.shutdown(timeout=0)
            if self.should_exit and sig == signal.SIGINT:  # a second Ctrl-C: stop waiting
                self.force_exit = True
            else:
                self.should_exit = True

    config = uvicorn.Config(
        create_app(served),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return Server(config)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def run_server(loaded: LoadedModel, settings: ServeSettings, sock: socket.socket | None = None) -> None:
    """Serve ``loaded`` in the foreground until SIGTERM or SIGINT (Ctrl-C), on ``sock`` (from
    :func:`bind`; default: bound here from ``settings``)."""
    sock = sock or bind(settings.host, settings.port)
    served = build_served(loaded, settings)
    server = _server(served)
    url = url_of(sock)
    auth = " -H 'Authorization: Bearer KEY'" if settings.api_key else ""
    print(
        f"serving {served.model_id} at {url} (playground {url}/); try: curl {url}/v1/completions{auth} "
        f'-H \'Content-Type: application/json\' -d \'{{"prompt": "Hello", "max_tokens": 20}}\'',
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        served.engine.shutdown()
        sock.close()
    print("stopped", file=sys.stderr, flush=True)


class BackgroundServer:
    """A server on a background thread (tests, notebooks, the docs): ``start()``, ``url``,
    ``stop()``; also a context manager."""

    def __init__(self, loaded: LoadedModel, settings: ServeSettings | None = None) -> None:
        self.settings = settings or ServeSettings(port=0)
        self.sock = bind(self.settings.host, self.settings.port)
        self.served = build_served(loaded, self.settings)
        self.url = url_of(self.sock)
        self._server = _server(self.served)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self.sock]}, name="nima-serve", daemon=True
        )

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        """Start serving; returns once the server accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Fail the requests in flight, stop the server and its engine."""
        self.served.engine.shutdown(timeout=0)
        self._server.should_exit = True
        self._thread.join(GRACEFUL_SHUTDOWN_S + 5)
        self.served.engine.shutdown()
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start() if not self._thread.is_alive() else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_server(
    checkpoint: str | Path | LoadedModel, *, device: str = "auto", **settings: Any
) -> BackgroundServer:
    """Serve a checkpoint (or an already loaded model) on a background thread; returns the started
    :class:`BackgroundServer` (``server.url``, ``server.stop()``). ``settings`` are
    :class:`ServeSettings` fields (``port=8000``, ``max_batch=8`` ...)."""
    loaded = (
        checkpoint if isinstance(checkpoint, LoadedModel) else load_for_inference(checkpoint, device=device)
    )
    return BackgroundServer(loaded, ServeSettings(**settings)).start()
