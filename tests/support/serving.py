"""A real tritonserver process for tests: free loopback ports, wait for ready, kill the process group."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from localcluster.process import free_port, stop_group

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0


def _fetch_module() -> ModuleType:
    """hack/triton/fetch.py, loaded by path (a module named `triton` would clash with torch's)."""
    spec = importlib.util.spec_from_file_location("md_triton_fetch", ROOT / "hack" / "triton" / "fetch.py")
    assert spec and spec.loader
    module = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return module


def triton_install():  # -> fetch.TritonInstall
    """The cached CPU tritonserver, fetched on first use."""
    fetch = _fetch_module()
    fetch.check_libpython()
    return fetch.ensure()


@dataclass
class TritonServer:
    """A running server and how to reach it."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    ready_seconds: float = 0.0

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _ready(port: int, path: str = "/v2/health/ready") -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def stop(server: TritonServer) -> None:
    """SIGTERM the whole process group (server and python-backend stubs), SIGKILL if it lingers."""
    stop_group(server.process)


@contextlib.contextmanager
def running(repository: Path, log_path: Path, extra_args: tuple[str, ...] = (),
            ports: tuple[int, int, int] | None = None) -> Iterator[TritonServer]:
    """Start tritonserver on `repository` (hardened flags as in the pod), wait until ready, stop after.

    `ports`: (http, grpc, metrics) chosen by the caller, for a server that must appear at an address
    known before it starts (the activator's backend); free ports otherwise."""
    install = triton_install()
    http, grpc, metrics = ports or (free_port(), free_port(), free_port())
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = install.lib_dir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    argv = [
        install.tritonserver,
        f"--model-repository={repository}",
        f"--backend-directory={install.backend_dir}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--allow-sagemaker=false",
        "--allow-vertex-ai=false",
        "--exit-on-error=true",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        *extra_args,
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = TritonServer(proc, http, grpc, metrics, log_path)
    try:
        while not _ready(http):
            if proc.poll() is not None:
                raise AssertionError(f"tritonserver exited with {proc.returncode}:\n{server.log()[-4000:]}")
            if time.monotonic() - started > READY_TIMEOUT_S:
                raise AssertionError(f"tritonserver not ready after {READY_TIMEOUT_S}s:\n{server.log()[-4000:]}")
            time.sleep(0.1)
        server.ready_seconds = time.monotonic() - started
        yield server
    finally:
        stop(server)


@contextlib.contextmanager
def running_gate(repository: Path, log_path: Path) -> Iterator[TritonServer]:
    """The build Job's gate Triton: exactly the sidecar's flags (resources/build_job.gate_triton_args,
    explicit model control, loopback HTTP only), on a free port; waits until live."""
    from modeldeploy.resources.build_job import gate_triton_args

    install = triton_install()
    http = free_port()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = install.lib_dir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    argv = [install.tritonserver, *gate_triton_args(str(repository), http),
            f"--backend-directory={install.backend_dir}"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = TritonServer(proc, http, 0, 0, log_path)
    try:
        while not _ready(http, "/v2/health/live"):
            if proc.poll() is not None:
                raise AssertionError(f"tritonserver exited with {proc.returncode}:\n{server.log()[-4000:]}")
            if time.monotonic() - started > READY_TIMEOUT_S:
                raise AssertionError(f"tritonserver not live after {READY_TIMEOUT_S}s:\n{server.log()[-4000:]}")
            time.sleep(0.1)
        server.ready_seconds = time.monotonic() - started
        yield server
    finally:
        stop(server)
