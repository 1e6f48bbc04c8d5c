"""The node cache agent as a real process (`python -m modeldeploy.cacheagent`) in front of a real
MinIO, read by the real `python -m modeldeploy.artifact fetch --cache-url`. No mocks.

What the store sends is read off MinIO's own metrics (its v3 API counters: GetObject requests and
bytes sent), so "downloads nothing" is MinIO's word, not the agent's. A throttling TCP proxy
between agent and MinIO makes fills slow enough to kill the agent in the middle of one, or to
have several pods ask during one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from modeldeploy.artifact.cli import main as artifact_main
from modeldeploy.artifact.manifest import Manifest
from modeldeploy.artifact.s3store import S3Store
from modeldeploy.cacheagent import disk
from tests.support.cacheagent import publish_artifact, running_agent
from tests.support.serving import ROOT, free_port
from tests.support.serving_models import linear_onnx
from tests.support.serving_s3 import S3Server, running_minio

pytestmark = pytest.mark.integration
MODELS, ARTIFACTS, PREFIX = "models", "artifacts", "team-a"
MiB = 1 << 20


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """MinIO with the linear ONNX model as a source, and its metrics readable without a token."""
    work = tmp_path_factory.mktemp("cacheagent-s3")
    linear_onnx(work / "model.onnx")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINIO_PROMETHEUS_AUTH_TYPE", "public")  # read by running_minio's environment
        with running_minio(work) as server:
            server.create_bucket(MODELS)
            server.create_bucket(ARTIFACTS)
            server.put(MODELS, "linear/model.onnx", (work / "model.onnx").read_bytes())
            yield server


def store_env(server: S3Server, endpoint: str | None = None) -> dict[str, str]:
    """What the agent (and a serving pod) get: the store and the store's own credentials."""
    env = {f"MD_STORE_{k}": v for k, v in server.env().items()}
    if endpoint:
        env["MD_STORE_AWS_ENDPOINT_URL"] = endpoint
    return {**env, "MD_ARTIFACT_STORE": f"s3://{ARTIFACTS}/{PREFIX}", "MD_FETCH_ATTEMPTS": "2"}


def s3_store(server: S3Server) -> S3Store:
    return S3Store(ARTIFACTS, PREFIX, server.env(), attempts=2)


def build_linear(tmp: Path, server: S3Server, version: str) -> str:
    """Build the linear model once with the real build command; its key."""
    env = {**server.env(), **store_env(server), "MD_SOURCE_URI": f"s3://{MODELS}/linear/model.onnx",
           "MD_MODEL_NAME": "linear", "MD_MODEL_VERSION": version, "MD_MAX_BATCH_SIZE": "8",
           "MD_REPOSITORY": str(tmp / f"build-{version}"), "MD_TERMINATION_LOG": str(tmp / f"build-{version}.json")}
    assert artifact_main(["build"], env) == 0
    return json.loads((tmp / f"build-{version}.json").read_text())["key"]


def fetch(tmp: Path, pod: str, env: dict[str, str], key: str, cache_url: str = "") -> dict:
    """One serving pod's fetch, in this process; its JSON result."""
    term = tmp / pod / "result.json"
    term.parent.mkdir(parents=True)
    full = {**env, "MD_ARTIFACT_KEY": key, "MD_REPOSITORY": str(tmp / pod / "repo"), "MD_TERMINATION_LOG": str(term)}
    if cache_url:
        full["MD_ARTIFACT_CACHE_URL"] = cache_url
    code = artifact_main(["fetch"], full)
    result = json.loads(term.read_text())
    assert code == 0, result
    return result


def fetch_process(tmp: Path, pod: str, env: dict[str, str], key: str, cache_url: str) -> subprocess.Popen[str]:
    """One serving pod's fetch as its own process (what an init container runs)."""
    (tmp / pod).mkdir(parents=True)
    full = {**os.environ, **env, "MD_ARTIFACT_KEY": key, "MD_REPOSITORY": str(tmp / pod / "repo"),
            "MD_TERMINATION_LOG": str(tmp / pod / "result.json"), "MD_ARTIFACT_CACHE_URL": cache_url,
            "PYTHONPATH": str(ROOT / "operator")}
    return subprocess.Popen([sys.executable, "-m", "modeldeploy.artifact", "fetch"], env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def verified_tree(tmp: Path, pod: str, server: S3Server, key: str) -> dict[str, bytes]:
    """The pod's model directory, checked here once more against the store's manifest."""
    manifest = Manifest.from_json(s3_store(server).read_manifest(key) or b"")
    files = tree(tmp / pod / "repo" / manifest.model_name)
    assert {rel: hashlib.sha256(b).hexdigest() for rel, b in files.items()} == {
        rel: f.sha256 for rel, f in manifest.files.items()}
    return files


def minio_sent(server: S3Server) -> tuple[int, int]:
    """(GetObject requests, S3 bytes sent) since MinIO started, from its own v3 metrics."""
    with urllib.request.urlopen(f"{server.endpoint}/minio/metrics/v3/api/requests", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    gets = sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith("minio_api_requests_total{") and 'name="GetObject"' in line)
    sent = sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith("minio_api_requests_traffic_sent_bytes{") and 'type="s3"' in line)
    return int(gets), int(sent)


def total_bytes(server: S3Server, key: str) -> tuple[int, int]:
    """(the artifact's file bytes, its manifest's bytes)."""
    data = s3_store(server).read_manifest(key) or b""
    return Manifest.from_json(data).total_bytes, len(data)


def no_secret(server: S3Server, *texts: str) -> None:
    for text in texts:
        assert server.secret_key not in text and server.access_key not in text


class SlowProxy:
    """A TCP proxy to MinIO sending its answers at `rate` bytes per second: a slow store."""

    def __init__(self, port: int, rate: float) -> None:
        self.target, self.rate = ("127.0.0.1", port), rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.rate), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, rate: float) -> None:
        try:
            while data := src.recv(16 * 1024):
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


@contextlib.contextmanager
def slow_store(server: S3Server, rate: float) -> Iterator[SlowProxy]:
    proxy = SlowProxy(server.port, rate)
    try:
        yield proxy
    finally:
        proxy.close()


# ---------------------------------------------------------------------------------------------------


def test_second_fetch_downloads_nothing_and_both_are_byte_identical(tmp_path: Path, s3: S3Server) -> None:
    key = build_linear(tmp_path, s3, "twice")
    env = store_env(s3)
    files, manifest_size = total_bytes(s3, key)
    fetch(tmp_path, "direct", env, key)  # no cache: the reference
    direct = verified_tree(tmp_path, "direct", s3, key)
    with running_agent(tmp_path / "cache", {**env, "MD_LOG_LEVEL": "DEBUG"}) as agent:
        before = minio_sent(s3)
        first = fetch(tmp_path, "pod1", env, key, agent.url)
        after_first = minio_sent(s3)
        # the pod's store is unreachable: it can only have been served by the agent
        second = fetch(tmp_path, "pod2", {**env, "MD_STORE_AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"},
                       key, agent.url)
        after_second = minio_sent(s3)
        m = agent.metrics()
        log = agent.log()
    assert (first["fromCache"], first["retried"]) == (second["fromCache"], second["retried"]) == (2, [])
    assert verified_tree(tmp_path, "pod1", s3, key) == verified_tree(tmp_path, "pod2", s3, key) == direct
    assert first["modelSha256"] == second["modelSha256"] == hashlib.sha256(direct["1/model.onnx"]).hexdigest()

    # MinIO: the first fetch cost one fill (manifest + 2 files), the second nothing at all
    assert after_first[0] - before[0] == 3 and after_first[1] - before[1] == files + manifest_size
    assert after_second == after_first
    # the agent says the same
    assert (m["modeldeploy_cache_misses_total"], m["modeldeploy_cache_hits_total"]) == (1, 1)
    assert m["modeldeploy_cache_fills_total{result=filled}"] == 1
    assert m["modeldeploy_cache_filled_bytes_total"] == files
    assert m["modeldeploy_cache_served_bytes_total"] == 2 * (files + manifest_size)
    assert m["modeldeploy_cache_bytes"] == files and m["modeldeploy_cache_artifacts"] == 1
    no_secret(s3, log)
    assert f"GET /{key}/model/1/model.onnx" in log  # the DEBUG access log is on, and redacted


def test_agent_down_fetch_reads_the_store(tmp_path: Path, s3: S3Server) -> None:
    key = build_linear(tmp_path, s3, "down")
    env = store_env(s3)
    before = minio_sent(s3)
    result = fetch(tmp_path, "pod", env, key, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert result["fromCache"] == 0 and result["retried"] == []
    assert minio_sent(s3)[0] - before[0] == 3
    fetch(tmp_path, "direct", env, key)
    assert verified_tree(tmp_path, "pod", s3, key) == verified_tree(tmp_path, "direct", s3, key)


def test_store_refusing_the_agent_is_logged_without_its_credentials(tmp_path: Path, s3: S3Server) -> None:
    key = build_linear(tmp_path, s3, "denied")
    env = store_env(s3)
    wrong = "not-the-store-secret-" + "z" * 20
    with running_agent(tmp_path / "cache", {**env, "MD_STORE_AWS_SECRET_ACCESS_KEY": wrong}) as agent:
        result = fetch(tmp_path, "pod", env, key, agent.url)  # the pod's own credentials are right
        m = agent.metrics()
        log = agent.log()
    assert result["fromCache"] == 0  # the agent answered 502; the pod read the store
    assert m["modeldeploy_cache_fills_total{result=store_error}"] == 1
    assert "HTTP 403 Forbidden (SignatureDoesNotMatch)" in log
    assert wrong not in log
    no_secret(s3, log)


def test_killed_mid_fill_keeps_its_cache_and_drops_the_partial_fill(tmp_path: Path, s3: S3Server) -> None:
    store = s3_store(s3)
    small, _ = publish_artifact(store, tmp_path, "small", 200_000, seed="kill-small")
    big, _ = publish_artifact(store, tmp_path, "big", 24 * MiB, seed="kill-big")
    env = store_env(s3)
    cache_dir = tmp_path / "cache"
    with slow_store(s3, rate=4 * MiB) as proxy, \
            running_agent(cache_dir, store_env(s3, proxy.endpoint), fill_wait_seconds="30") as agent:
        fetch(tmp_path, "small1", env, small, agent.url)
        pod = fetch_process(tmp_path, "big1", env, big, agent.url)  # waits on the agent's fill of big
        partial = _wait_for_partial(cache_dir, big, at_least=2 * MiB)
        agent.kill()
        out, err = pod.communicate(timeout=120)
        killed_log = agent.log()
    # the pod lost its agent mid-wait and read the store instead: a slower start, never a failed one
    assert pod.returncode == 0, err
    result = json.loads((tmp_path / "big1" / "result.json").read_text())
    assert result["fromCache"] == 0
    verified_tree(tmp_path, "big1", s3, big)
    assert partial.exists() and (cache_dir / small).is_dir()  # what SIGKILL left behind

    with running_agent(cache_dir, env, log_name="agent2.log") as agent:
        assert sorted(p.name for p in cache_dir.iterdir()) == [small]  # the partial fill is gone
        started = agent.metrics()
        before = minio_sent(s3)
        again = fetch(tmp_path, "small2", env, small, agent.url)
        assert minio_sent(s3) == before  # served from the cache that survived the kill
        assert again["fromCache"] == 2
        assert verified_tree(tmp_path, "small2", s3, small) == verified_tree(tmp_path, "small1", s3, small)
        big2 = fetch(tmp_path, "big2", env, big, agent.url)
        m = agent.metrics()
        log = agent.log()
    assert started["modeldeploy_cache_dropped_total{reason=partial}"] == 1
    assert started["modeldeploy_cache_artifacts"] == 1
    assert m["modeldeploy_cache_hits_total"] == 1 and m["modeldeploy_cache_misses_total"] == 1
    assert big2["fromCache"] == 2
    assert verified_tree(tmp_path, "big2", s3, big) == verified_tree(tmp_path, "big1", s3, big)
    no_secret(s3, out, err, killed_log, log)


def _wait_for_partial(cache_dir: Path, key: str, at_least: int, timeout_s: float = 60) -> Path:
    """The agent's fill directory of `key` once it holds `at_least` bytes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in cache_dir.glob(f"{disk.FILL_PREFIX}{key}-*"):
            model = p / "model" / "1" / "model.onnx"
            with contextlib.suppress(FileNotFoundError):
                if model.stat().st_size >= at_least:
                    return p
        time.sleep(0.02)
    raise AssertionError(f"no fill of {key} in progress under {cache_dir}: {sorted(cache_dir.iterdir())}")


def test_a_corrupted_file_is_detected_dropped_and_refilled(tmp_path: Path, s3: S3Server) -> None:
    key = build_linear(tmp_path, s3, "corrupt")
    env = store_env(s3)
    cache_dir = tmp_path / "cache"
    model = cache_dir / key / "model" / "1" / "model.onnx"
    with running_agent(cache_dir, env) as agent:
        fetch(tmp_path, "pod1", env, key, agent.url)
        good = verified_tree(tmp_path, "pod1", s3, key)
        flipped = bytearray(model.read_bytes())
        flipped[len(flipped) // 2] ^= 0xFF  # same size: only the bytes tell
        model.write_bytes(bytes(flipped))
        before = minio_sent(s3)
        result = fetch(tmp_path, "pod2", env, key, agent.url)
        refill = minio_sent(s3)[0] - before[0]
        m = agent.metrics()
        # the agent saw the file changed, hashed it, dropped the copy and filled it again before answering
        assert (result["fromCache"], result["retried"]) == (2, [])
        assert verified_tree(tmp_path, "pod2", s3, key) == good
        assert model.read_bytes() == good["1/model.onnx"]
        assert m["modeldeploy_cache_dropped_total{reason=corrupt}"] == 1
        assert m["modeldeploy_cache_fills_total{result=filled}"] == 2
        assert refill == 3  # MinIO: the refill (manifest and both files); the pod read nothing there
        log = agent.log()
    assert "dropped the copy of" in log and "sha256 does not match the manifest" in log

    # bit rot the stat cannot show (its recorded signature matches): caught while streaming, cut short
    model.write_bytes(bytes(flipped))
    sigs = disk.read_signatures(cache_dir / key / disk.SIGNATURES_FILE)
    sigs["1/model.onnx"] = disk.Sig.of(model.stat())
    disk.write_signatures(cache_dir / key / disk.SIGNATURES_FILE, sigs)
    with running_agent(cache_dir, env, log_name="agent2.log") as agent:
        result = fetch(tmp_path, "pod3", env, key, agent.url)
        assert result["retried"] == ["1/model.onnx"] and result["fromCache"] == 1  # that file from the store
        assert verified_tree(tmp_path, "pod3", s3, key) == good
        assert agent.metrics()["modeldeploy_cache_dropped_total{reason=corrupt}"] == 1
        result = fetch(tmp_path, "pod4", env, key, agent.url)  # the next pod: a fresh copy
        assert (result["fromCache"], result["retried"]) == (2, [])
        assert agent.metrics()["modeldeploy_cache_fills_total{result=filled}"] == 1


def test_the_budget_evicts_the_least_recently_used(tmp_path: Path, s3: S3Server) -> None:
    store = s3_store(s3)
    keys = {n: publish_artifact(store, tmp_path, n, 300_000, seed=f"budget-{n}") for n in ("a", "b", "c")}
    size = {n: m.total_bytes for n, (_, m) in keys.items()}
    key = {n: k for n, (k, _) in keys.items()}
    budget = size["a"] + size["b"] + 1000  # two fit, not three
    env = store_env(s3)
    cache_dir = tmp_path / "cache"

    def cached() -> list[str]:
        return sorted(p.name for p in cache_dir.iterdir())

    with running_agent(cache_dir, env, max_bytes=budget) as agent:
        fetch(tmp_path, "a1", env, key["a"], agent.url)
        fetch(tmp_path, "b1", env, key["b"], agent.url)
        fetch(tmp_path, "a2", env, key["a"], agent.url)  # a is used again: b is the least recently used
        fetch(tmp_path, "c1", env, key["c"], agent.url)
        assert cached() == sorted([key["a"], key["c"]])
        m = agent.metrics()
        assert m["modeldeploy_cache_evictions_total"] == 1 and m["modeldeploy_cache_evicted_bytes_total"] == size["b"]
        assert m["modeldeploy_cache_bytes"] == size["a"] + size["c"] <= budget
        before = minio_sent(s3)
        back = fetch(tmp_path, "b2", env, key["b"], agent.url)  # evicted: from the store again; a goes now
        assert minio_sent(s3)[0] - before[0] == 3 and back["fromCache"] == 2
        assert cached() == sorted([key["b"], key["c"]])
        m = agent.metrics()
    assert m["modeldeploy_cache_evictions_total"] == 2 and m["modeldeploy_cache_bytes"] <= budget
    assert (m["modeldeploy_cache_hits_total"], m["modeldeploy_cache_misses_total"]) == (1, 4)
    for pod, name in (("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b"), ("c1", "c")):
        verified_tree(tmp_path, pod, s3, key[name])


def test_concurrent_fetches_of_one_key_fill_once(tmp_path: Path, s3: S3Server) -> None:
    key, manifest = publish_artifact(s3_store(s3), tmp_path, "shared", 8 * MiB, seed="concurrent")
    env = store_env(s3)
    with slow_store(s3, rate=3 * MiB) as proxy, \
            running_agent(tmp_path / "cache", store_env(s3, proxy.endpoint)) as agent:
        before = minio_sent(s3)
        pods = [fetch_process(tmp_path, f"pod{i}", env, key, agent.url) for i in range(4)]
        outputs = [p.communicate(timeout=120) for p in pods]
        m = agent.metrics()
        after = minio_sent(s3)
        log = agent.log()
    assert [p.returncode for p in pods] == [0] * 4, outputs
    results = [json.loads((tmp_path / f"pod{i}" / "result.json").read_text()) for i in range(4)]
    print("fromCache:", [r["fromCache"] for r in results], "hits/misses:", m["modeldeploy_cache_hits_total"],
          m["modeldeploy_cache_misses_total"])
    assert all((r["fromCache"], r["retried"]) == (2, []) for r in results)
    trees = [verified_tree(tmp_path, f"pod{i}", s3, key) for i in range(4)]
    assert all(t == trees[0] for t in trees)
    assert m["modeldeploy_cache_fills_total{result=filled}"] == 1
    assert m["modeldeploy_cache_misses_total"] >= 2  # at least two pods waited on the same fill
    assert m["modeldeploy_cache_hits_total"] + m["modeldeploy_cache_misses_total"] == 4
    assert m["modeldeploy_cache_filled_bytes_total"] == manifest.total_bytes
    assert after[0] - before[0] == 3  # MinIO: one manifest and two files, whatever the number of pods
    no_secret(s3, log, *[o + e for o, e in outputs])
