"""The agent's HTTP contract, read by the fetch side's own client (artifact/cache.py HttpReader and
`python -m modeldeploy.artifact fetch --cache-url`), on a loopback port over a directory store;
its settings and its redacted logs."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modeldeploy.artifact.cache import HttpReader
from modeldeploy.artifact.cli import main as artifact_main
from modeldeploy.artifact.dirstore import DirStore
from modeldeploy.cacheagent import disk
from modeldeploy.cacheagent.cache import NodeCache
from modeldeploy.cacheagent.cli import setup_logging
from modeldeploy.cacheagent.metrics import AgentMetrics
from modeldeploy.cacheagent.server import AgentServer, route
from modeldeploy.cacheagent.settings import agent_settings
from modeldeploy.loader.errors import ConfigError
from modeldeploy.loader.report import Redactor
from tests.support.cacheagent import key_for, metrics, publish_artifact

SIZE = 3 * (1 << 20) + 123  # a few chunks


@contextlib.contextmanager
def serving(cache: NodeCache, m: AgentMetrics) -> Iterator[str]:
    server = AgentServer("127.0.0.1", 0, cache, m)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Agent:
    url: str
    key: str
    store: DirStore
    cache: NodeCache


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    """An agent in this process with one artifact in its store, nothing cached yet."""
    (tmp_path / "store").mkdir()
    store = DirStore(tmp_path / "store")
    key, _ = publish_artifact(store, tmp_path, "digits", SIZE, seed="digits")
    m = AgentMetrics()
    cache = NodeCache(tmp_path / "cache", store, 1 << 30, m, fill_wait_s=5)
    cache.start()
    with serving(cache, m) as url:
        yield Agent(url, key, store, cache)


def get(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_routes() -> None:
    k = key_for("m", "x")
    assert route(f"/{k}/manifest.json") == ("manifest", k, "")
    assert route(f"/{k}/model/1/model.onnx") == ("file", k, "1/model.onnx")
    assert route(f"/{k}/model/1%2Fmodel.onnx") == ("file", k, "1/model.onnx")  # as the client quotes
    assert route("/metrics") == ("metrics", "", "")
    assert route("/healthz?probe=1") == ("healthz", "", "")
    for bad in (f"/{k}/model/../../etc/passwd", f"/{k}/model/", "/not-a-key/manifest.json", f"/{k}/other", "/",
                f"/{k}/model/a//b", f"/{k}/model/%2e%2e/x"):
        assert route(bad)[0] == "unknown", bad


def test_the_contract_as_the_fetch_side_reads_it(agent: Agent, tmp_path: Path) -> None:
    url, key, store = agent.url, agent.key, agent.store
    reader = HttpReader(url)
    assert reader.read_manifest(key) == store.read_manifest(key)  # the store's bytes, as they are
    assert reader.read_manifest(key_for("other", "x")) is None  # 404: not built
    dest = tmp_path / "got" / "model.onnx"
    digest = reader.download(key, "1/model.onnx", dest, SIZE)
    src = (tmp_path / "store" / key / "model" / "1" / "model.onnx").read_bytes()
    assert digest.size == SIZE and digest.sha256 == hashlib.sha256(src).hexdigest() and dest.read_bytes() == src
    status, body, _ = get(f"{url}/{key}/model/2/model.onnx")
    assert status == 404 and b"has no file" in body
    assert get(f"{url}/nope")[0] == 404 and get(f"{url}/healthz")[:2] == (200, b"ok\n")
    got = metrics(url)
    assert got["modeldeploy_cache_misses_total"] == 2 and got["modeldeploy_cache_hits_total"] == 0  # one not built
    assert got["modeldeploy_cache_fills_total{result=filled}"] == 1
    assert got["modeldeploy_cache_fills_total{result=not_built}"] == 1
    assert got["modeldeploy_cache_served_bytes_total"] == SIZE + len(store.read_manifest(key) or b"")


def test_fetch_cli_through_the_agent_twice(agent: Agent, tmp_path: Path) -> None:
    url, key, store = agent.url, agent.key, agent.store
    results = []
    for pod in ("pod1", "pod2"):
        term = tmp_path / pod / "term"
        env = {"MD_ARTIFACT_STORE": f"file://{store.root}", "MD_ARTIFACT_KEY": key, "MD_ARTIFACT_CACHE_URL": url,
               "MD_REPOSITORY": str(tmp_path / pod / "repo"), "MD_TERMINATION_LOG": str(term)}
        (tmp_path / pod).mkdir()
        assert artifact_main(["fetch"], env) == 0
        results.append(json.loads(term.read_text()))
    assert [(r["fromCache"], r["retried"]) for r in results] == [(2, []), (2, [])]
    one = (tmp_path / "pod1" / "repo" / "digits" / "1" / "model.onnx").read_bytes()
    assert one == (tmp_path / "pod2" / "repo" / "digits" / "1" / "model.onnx").read_bytes()
    assert one == (store.root / key / "model" / "1" / "model.onnx").read_bytes()
    got = metrics(url)
    assert (got["modeldeploy_cache_hits_total"], got["modeldeploy_cache_misses_total"]) == (1, 1)
    assert got["modeldeploy_cache_fills_total{result=filled}"] == 1


def test_undetected_rot_is_cut_short_and_the_copy_dropped(agent: Agent, tmp_path: Path) -> None:
    url, key = agent.url, agent.key
    reader = HttpReader(url)
    assert reader.read_manifest(key)
    path = agent.cache.root / key / "model" / "1" / "model.onnx"
    good = path.read_bytes()
    # a flipped byte the stat cannot show (bit rot): the agent's record of the file matches the bad one
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    agent.cache._entries[key].copy.trusted["1/model.onnx"] = disk.Sig.of(path.stat())
    digest = reader.download(key, "1/model.onnx", tmp_path / "got", SIZE)
    assert digest.size < SIZE  # cut short: never a complete wrong file; the pod re-fetches from the store
    assert digest.size == SIZE - (SIZE % (1 << 20))  # everything but the held-back last chunk
    got = metrics(url)
    assert got["modeldeploy_cache_dropped_total{reason=corrupt}"] == 1
    digest = reader.download(key, "1/model.onnx", tmp_path / "again", SIZE)  # filled again
    assert digest.size == SIZE and (tmp_path / "again").read_bytes() == good
    assert metrics(url)["modeldeploy_cache_fills_total{result=filled}"] == 2


def test_a_fill_still_running_answers_503_with_retry_after(tmp_path: Path) -> None:
    class Slow(DirStore):
        gate = threading.Event()

        def read_manifest(self, key: str) -> bytes | None:
            self.gate.wait(10)
            return super().read_manifest(key)

    (tmp_path / "store").mkdir()
    store = Slow(tmp_path / "store")
    key, _ = publish_artifact(DirStore(store.root), tmp_path, "m", 10, seed="m")
    m = AgentMetrics()
    cache = NodeCache(tmp_path / "cache", store, 1 << 30, m, fill_wait_s=0.1)
    cache.start()
    with serving(cache, m) as url:
        status, body, headers = get(f"{url}/{key}/manifest.json")
        assert status == 503 and headers["Retry-After"] == "5" and b"being filled" in body
        Slow.gate.set()
        cache.fill_wait_s = 10
        assert get(f"{url}/{key}/manifest.json")[0] == 200


def test_settings_from_environment_and_flags(tmp_path: Path) -> None:
    env = {"MD_ARTIFACT_STORE": "s3://artifacts/x", "MD_CACHE_MAX_BYTES": "2Gi", "MD_CACHE_DIR": str(tmp_path),
           "MD_CACHE_PORT": "9000", "MD_CACHE_FILL_WAIT_SECONDS": "3.5"}
    s = agent_settings([], env)
    assert (s.store, s.max_bytes, s.directory, s.port, s.fill_wait_s) == ("s3://artifacts/x", 2 << 30, tmp_path,
                                                                          9000, 3.5)
    assert agent_settings(["--max-bytes", "1000", "--port", "81"], env).max_bytes == 1000
    assert agent_settings([], {"MD_ARTIFACT_STORE": "s3://a"}).max_bytes == 50 << 30
    for bad, match in ((["--max-bytes", "lots"], "MD_CACHE_MAX_BYTES"), (["--port", "70000"], "MD_CACHE_PORT"),
                       (["--dir", "relative"], "absolute"), (["--fill-wait", "0"], "positive"),
                       (["--log-level", "chatty"], "MD_LOG_LEVEL"), (["--nope"], "invalid arguments")):
        with pytest.raises(ConfigError, match=match):
            agent_settings(bad, env)
    with pytest.raises(Exception, match="MD_ARTIFACT_STORE is required") as e:
        agent_settings([], {})
    assert getattr(e.value, "exit_code", None) == 77


def test_log_lines_are_redacted() -> None:
    secret = "s3cr3t-value-of-the-store"
    stream = io.StringIO()
    setup_logging(Redactor([secret]), "INFO", stream)
    import logging

    for name in ("modeldeploy.cacheagent", "modeldeploy.artifact", "modeldeploy.loader"):
        logging.getLogger(name).warning("request signed with %s failed", secret)
    text = stream.getvalue()
    assert secret not in text and text.count("***") == 3


def test_the_agent_imports_no_heavy_or_operator_dependencies() -> None:
    heavy = ("torch", "onnxruntime", "numpy", "onnx", "kopf", "kubernetes", "yaml")
    code = ("import sys, json\n"
            "import modeldeploy.cacheagent.cli, modeldeploy.cacheagent.server, modeldeploy.cacheagent.cache\n"
            "import modeldeploy.artifact.s3store, modeldeploy.artifact.dirstore\n"
            f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []
