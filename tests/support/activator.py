"""`python -m modeldeploy.activator` as a real process on loopback ports, and its routes and metrics."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from localcluster.process import free_port, stop_group
from tests.support.cacheagent import metrics as scrape_metrics

ROOT = Path(__file__).resolve().parents[2]


def write_routes(path: Path, models: list[dict[str, object]]) -> None:
    """The routes document, replaced atomically (the activator polls the file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"models": models}))
    tmp.replace(path)


@dataclass
class ActivatorProcess:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    admin_port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def metrics(self) -> dict[str, float]:
        """Every sample, keyed as the cache agent's tests key them: `name{label=value,...}`."""
        return scrape_metrics(self.admin_url)

    def metric(self, metric: str, /, **labels: str) -> float:
        key = f"{metric}{{{','.join(f'{k}={v}' for k, v in sorted(labels.items()))}}}" if labels else metric
        return self.metrics().get(key, 0.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def running_activator(log_path: Path, env: Mapping[str, str], timeout_s: float = 30.0) -> Iterator[ActivatorProcess]:
    """The activator with MD_ACTIVATOR_* settings from `env` (routes file or ConfigMap given there),
    on free loopback ports; SIGTERM after (SIGKILL if it lingers)."""
    http, grpc, admin = free_port(), free_port(), free_port()
    full = {**os.environ, "MD_ACTIVATOR_ADDRESS": "127.0.0.1", "MD_ACTIVATOR_HTTP_PORT": str(http),
            "MD_ACTIVATOR_GRPC_PORT": str(grpc), "MD_ACTIVATOR_ADMIN_PORT": str(admin),
            "MD_ACTIVATOR_DRAIN_SECONDS": "2", "MD_ACTIVATOR_UNREADY_SECONDS": "0",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]), **env}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "modeldeploy.activator"], env=full, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    act = ActivatorProcess(proc, http, grpc, admin, log_path)
    try:
        deadline = time.monotonic() + timeout_s
        while not _ready(act.admin_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the activator did not become ready:\n{act.log()[-3000:]}")
            time.sleep(0.05)
        yield act
    finally:
        stop_group(proc)
