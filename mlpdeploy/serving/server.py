"""Run the app with uvicorn: `serve(paths)` blocks; `Server` runs it in a background thread (tests,
benchmarks, notebooks).

Shutdown is graceful: on SIGTERM or Ctrl-C uvicorn stops accepting connections, lets requests in
flight (streams included) finish for up to `grace` seconds, then exits 0.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

from mlpdeploy.errors import MlpdeployError, require
from mlpdeploy.serving.app import DEFAULT_MAX_BODY, create_app
from mlpdeploy.serving.models import close_models, load_models


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # IPPROTO_TCP: asyncio then sets TCP_NODELAY on connections
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    except OSError as exc:
        sock.close()
        raise MlpdeployError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port (0 picks a free one)") from None
    return sock


class Server:
    """A uvicorn server for built models, listening on `host:port` (port 0: a free port, see `.port`);
    `batching`: the decoders' scheduler limits (`runtime.scheduler.SchedulerOptions`)."""

    def __init__(self, paths: list[Path | str], host: str = "127.0.0.1", port: int = 8000, threads: int | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY, log_level: str = "warning", grace: float = 30.0, speculative: str | None = None,
                 batching=None):
        uvicorn = require("uvicorn", "serve", "mlpdeploy serve")
        self.models, self.max_body_bytes = load_models(paths, threads, speculative, batching), max_body_bytes
        self.app = create_app(self.models, max_body_bytes)
        self.socket = _bind(host, port)
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=log_level, timeout_graceful_shutdown=grace, access_log=log_level == "debug")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def run(self) -> None:
        """Serve until SIGTERM / Ctrl-C (uvicorn's signal handlers, in the main thread). uvicorn
        re-raises the signal after its graceful shutdown; a SIGTERM then ends `run` normally (exit 0)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: None)
        try:
            self.server.run(sockets=[self.socket])
        finally:
            close_models(self.models)

    def start(self, timeout: float = 30.0) -> "Server":
        """Serve from a background thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.run, name="mlpdeploy-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise MlpdeployError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=60)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
