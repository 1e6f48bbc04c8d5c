"""The fetch's fallback from the node cache agent to the store: an agent that drops connections
costs one timeout per fetch, not one per file; a miss or a bad file is per file."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modeldeploy.artifact.cache import AgentUnreachable, FallbackReader, HttpReader
from modeldeploy.artifact.errors import ArtifactCorrupt
from modeldeploy.artifact.store import Digest
from modeldeploy.loader.errors import LoaderError

FILES = ("config.pbtxt", "1/model.onnx", "1/model.py")


class Store:
    """The store side: always answers, counts what it was asked."""

    def __init__(self) -> None:
        self.downloads: list[str] = []

    def where(self, key: str) -> str:
        return f"store/{key}"

    def read_manifest(self, key: str) -> bytes | None:
        return b"{}"

    def download(self, key: str, rel: str, dest: Path, size: int) -> Digest:
        self.downloads.append(rel)
        return Digest(size, "0" * 64)


class Agent(Store):
    """The agent side: fails every request with `error`."""

    def __init__(self, error: LoaderError) -> None:
        super().__init__()
        self.error = error

    def read_manifest(self, key: str) -> bytes | None:
        self.downloads.append("manifest.json")
        raise self.error

    def download(self, key: str, rel: str, dest: Path, size: int) -> Digest:
        self.downloads.append(rel)
        raise self.error


@pytest.fixture
def dropping_agent() -> Iterator[str]:
    """A real TCP endpoint that accepts each connection and closes it at once, as a dying agent does."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


def test_a_dropped_connection_is_unreachable(dropping_agent: str, tmp_path: Path) -> None:
    with pytest.raises(AgentUnreachable):
        HttpReader(dropping_agent, timeout_s=2).download("digits-" + "0" * 32, "1/model.onnx", tmp_path / "m", 10)


def test_an_unreachable_agent_is_asked_once_per_fetch(tmp_path: Path) -> None:
    agent, store = Agent(AgentUnreachable("cache agent at http://x unreachable: timed out")), Store()
    reader = FallbackReader(agent, store)
    assert reader.read_manifest("k") == b"{}"
    for rel in FILES:
        reader.download("k", rel, tmp_path / rel, 1)
    assert agent.downloads == ["manifest.json"]  # then never again in this fetch
    assert store.downloads == list(FILES) and reader.from_cache == set()


def test_a_miss_or_a_bad_file_is_per_file(tmp_path: Path) -> None:
    agent, store = Agent(ArtifactCorrupt("not in the cache")), Store()
    reader = FallbackReader(agent, store)
    for rel in FILES:
        reader.download("k", rel, tmp_path / rel, 1)
    assert agent.downloads == list(FILES) and store.downloads == list(FILES)  # the agent is still asked
