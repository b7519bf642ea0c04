"""The real Triton Inference Server that the `nvidia-pytriton` wheel bundles, started on a repository.

The wheel (`pip install --no-deps nvidia-pytriton==0.7.0`; `make setup` does it) carries
`pytriton/tritonserver/bin/tritonserver` (Triton 2.51, release 24.10), its shared libraries in
`nvidia_pytriton.libs/`, the Python backend (`backends/python/libtriton_python.so`) and one Python
backend stub per Python version (`python_backend_stubs/3.X/triton_python_backend_stub`). It has no
ONNX Runtime or TensorRT backend. `--no-deps`: its metadata pins numpy<2, which this project does
not use; mlpdeploy only runs its binaries.

Starting it takes what pytriton does: `LD_LIBRARY_PATH` at the wheel's libraries and at this
Python's `libpython3.X.so`, and a backend directory whose `python/` holds the wheel's backend
library with the stub of *this* Python's version (the stub embeds libpython and must match the
interpreter that runs `model.py`). That directory is made once under `~/.cache/mlpdeploy` of
links into the wheel. Which environment `model.py` imports mlpdeploy from is the repository's
business (`EXECUTION_ENV_PATH` in each config.pbtxt, see `serving.triton_python`).

    python -m mlpdeploy.serving.tritonserver REPO [--http-port 8000] [-- extra tritonserver flags]

prints the command it runs, then runs it. `TritonServer(repo).start()` does the same from Python
(free ports, waits until ready, fails with the server's log; tests use it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mlpdeploy.errors import MlpdeployError

WHEEL = "nvidia-pytriton==0.7.0"
INSTALL = f"pip install --no-deps '{WHEEL}'"
PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")


@dataclass(frozen=True)
class Bundle:
    """Where the wheel put the server: `root` = pytriton/tritonserver, `libs` = nvidia_pytriton.libs."""

    root: Path
    libs: Path

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    def stub(self, version: str) -> Path:
        return self.root / "python_backend_stubs" / version / "triton_python_backend_stub"


def find_bundle() -> Bundle:
    """The bundled server of the installed `nvidia-pytriton` wheel, or a one-line error saying how to install it."""
    spec = importlib.util.find_spec("pytriton")  # finds the package without importing it (its imports need pytriton's deps)
    if spec is None or not spec.submodule_search_locations:
        raise MlpdeployError(f"the Triton Inference Server binary comes with the nvidia-pytriton wheel: {INSTALL} (or `make setup`)")
    package = Path(next(iter(spec.submodule_search_locations)))
    bundle = Bundle(package / "tritonserver", package.parent / "nvidia_pytriton.libs")
    if not bundle.binary.is_file() or not bundle.libs.is_dir():
        raise MlpdeployError(f"{package} has no tritonserver binary or nvidia_pytriton.libs; reinstall it: {INSTALL}")
    return bundle


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def backend_directory(bundle: Bundle, cache: Path | None = None) -> Path:
    """A `--backend-directory` whose python/ holds the wheel's Python backend and this Python's stub (links)."""
    stub = bundle.stub(python_version())
    if not stub.is_file():
        raise MlpdeployError(f"nvidia-pytriton has no Python backend stub for Python {python_version()} "
                             f"(it has {sorted(p.name for p in stub.parent.parent.iterdir())}); run with one of those Pythons")
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlpdeploy" / "tritonserver"
    key = hashlib.sha1(str(bundle.root.resolve()).encode()).hexdigest()[:12]  # one per installed wheel
    directory = cache / f"{key}-python{python_version()}" / "backends"
    python = directory / "python"
    python.mkdir(parents=True, exist_ok=True)
    targets = {name: bundle.root / "backends" / "python" / name for name in PYTHON_BACKEND_FILES}
    targets["triton_python_backend_stub"] = stub
    for name, target in targets.items():
        link = python / name
        if not (link.is_symlink() and link.resolve() == target.resolve()):
            temporary = python / f".{name}.{os.getpid()}"
            temporary.symlink_to(target)
            temporary.replace(link)  # atomic: two servers starting at once see a whole link
    return directory


def server_environment(bundle: Bundle) -> dict[str, str]:
    """The environment tritonserver runs in: the wheel's libraries and this Python's libpython on the loader path."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [str(bundle.libs)] + ([libdir] if libdir else []) + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])
    env["LD_LIBRARY_PATH"] = ":".join(paths)
    return env


def server_command(repo: Path | str, bundle: Bundle, backends: Path, http_port: int = 8000, grpc_port: int = 8001,
                   metrics_port: int = 8002, extra: list[str] = ()) -> list[str]:
    """The tritonserver command line for `repo` (the Python backend's shared-memory names are unique per HTTP port,
    so several servers can run on one machine)."""
    return [
        str(bundle.binary), f"--model-repository={Path(repo).resolve()}", f"--backend-directory={backends}",
        f"--http-port={http_port}", f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}",
        "--allow-gpu-metrics=false", f"--backend-config=python,shm-region-prefix-name=mlpdeploy_{http_port}_", *extra,
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_file():
    return tempfile.NamedTemporaryFile(prefix="tritonserver-", suffix=".log", delete=False)  # noqa: SIM115  (closed by TritonServer)


class TritonServer:
    """The bundled tritonserver on `repo`, on free loopback ports: `start()` returns once it is ready
    (or raises with its log), `stop()` ends it, giving requests in flight `exit_timeout` seconds
    (Triton waits that long for open client connections too); a context manager too."""

    def __init__(self, repo: Path | str, extra: list[str] = (), timeout: float = 120.0, exit_timeout: int = 5):
        self.bundle = find_bundle()
        self.repo, self.extra, self.timeout = Path(repo), [f"--exit-timeout-secs={exit_timeout}", *extra], timeout
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.process: subprocess.Popen | None = None
        self.log_file = _log_file()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return server_command(self.repo, self.bundle, backend_directory(self.bundle), self.http_port, self.grpc_port,
                              self.metrics_port, ["--http-address=127.0.0.1", "--grpc-address=127.0.0.1", *self.extra])

    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def start(self, attempts: int = 3) -> "TritonServer":
        """Start, wait until ready; ports another process took between choosing and binding are chosen again."""
        import urllib.request

        self.process = subprocess.Popen(self.command(), env=server_environment(self.bundle), stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "already in use" in self.log() and attempts > 1:
                    self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
                    self.remove_log()
                    self.log_file = _log_file()
                    return self.start(attempts - 1)
                raise MlpdeployError(f"tritonserver exited with status {self.process.returncode}; its log:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise MlpdeployError(f"tritonserver was not ready after {self.timeout:.0f} s; its log:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()

    def remove_log(self) -> None:
        self.log_file.close()
        Path(self.log_file.name).unlink(missing_ok=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.remove_log()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpdeploy.serving.tritonserver",
                                     description="Run the Triton Inference Server bundled in nvidia-pytriton on a model repository.")
    parser.add_argument("repo", type=Path, help="the model repository (`mlpdeploy package ... --triton REPO`)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("extra", nargs="*", help="more tritonserver flags, after `--`")
    args = parser.parse_args(argv)
    try:
        bundle = find_bundle()
        command = server_command(args.repo, bundle, backend_directory(bundle), args.http_port, args.grpc_port, args.metrics_port, args.extra)
    except MlpdeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env = server_environment(bundle)
    print(f"LD_LIBRARY_PATH={env['LD_LIBRARY_PATH']} {' '.join(command)}", flush=True)
    os.execve(command[0], command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
