"""Helpers for the node cache agent's tests: artifacts of chosen sizes, the agent as a real process,
and its /metrics read back as numbers."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from modeldeploy.artifact.manifest import Manifest, manifest_for
from modeldeploy.artifact.store import ArtifactStore
from modeldeploy.artifact.transfer import publish

from .serving import ROOT, free_port


def key_for(name: str, seed: str) -> str:
    """A valid artifact key (<name>-<32 hex>) that depends on `seed`."""
    return f"{name}-{hashlib.sha256(seed.encode()).hexdigest()[:32]}"


def model_dir(path: Path, name: str, size: int, seed: str) -> Path:
    """A Triton model directory: config.pbtxt and a `size`-byte 1/model.onnx (deterministic bytes)."""
    (path / "1").mkdir(parents=True, exist_ok=True)
    (path / "config.pbtxt").write_text(f'name: "{name}"\n# {seed}\n')
    block = hashlib.sha256(seed.encode()).digest()
    (path / "1" / "model.onnx").write_bytes((block * (size // len(block) + 1))[:size])
    return path


def publish_artifact(store: ArtifactStore, work: Path, name: str, size: int, seed: str) -> tuple[str, Manifest]:
    """Publish a model directory of about `size` bytes as an artifact (what a build Job uploads)."""
    key = key_for(name, seed)
    src = model_dir(work / f"src-{key}", name, size, seed)
    return key, publish(store, key, src, manifest_for(src, key=key, model_name=name)).manifest


def metrics(url: str) -> dict[str, float]:
    """Every sample of the agent's /metrics: `name` or `name{label=value,...}` -> value."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@dataclass
class AgentProcess:
    """`python -m modeldeploy.cacheagent` running on a loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    directory: Path
    log_path: Path

    def metrics(self) -> dict[str, float]:
        return metrics(self.url)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, like a node's OOM killer or a crash."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def running_agent(directory: Path, env: Mapping[str, str], *, max_bytes: int | str = "1Gi",
                  port: int | None = None, log_name: str = "agent.log", timeout_s: float = 30.0,
                  **settings: str) -> Iterator[AgentProcess]:
    """The agent as a real process over `directory`, with the store settings in `env` (MD_ARTIFACT_STORE,
    MD_STORE_AWS_*); extra MD_CACHE_* settings as keyword arguments (fill_wait_seconds="2" ->
    MD_CACHE_FILL_WAIT_SECONDS)."""
    port = port or free_port()
    log_path = directory.parent / log_name
    full = {**os.environ, **env, "MD_CACHE_DIR": str(directory), "MD_CACHE_PORT": str(port),
            "MD_CACHE_ADDRESS": "127.0.0.1", "MD_CACHE_MAX_BYTES": str(max_bytes),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]),
            **{f"MD_CACHE_{k.upper()}": v for k, v in settings.items()}}
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "modeldeploy.cacheagent"], env=full, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    agent = AgentProcess(proc, f"http://127.0.0.1:{port}", directory, log_path)
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(agent.url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the cache agent did not start:\n{agent.log()[-3000:]}")
            time.sleep(0.05)
        yield agent
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.kill()
