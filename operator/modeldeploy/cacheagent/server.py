"""The agent's HTTP face: the artifact contract the fetch side reads, plus /metrics and /healthz.

    GET /{key}/manifest.json         200 manifest | 404 not built | 503 not ready or no room | 502 store
    GET /{key}/model/{relative path} 200 bytes    | 404 no such file | 503 | 502
    GET /metrics                     Prometheus text (the agent's own registry)
    GET /healthz                     200 while the cache directory is there

Every failure other than 404 means "read the store yourself": the fetch side
(artifact/cache.py) falls back on any of them. A file's response announces its full length and
holds back its last chunk until the bytes matched the manifest (cache.stream_verified); when they
do not, the connection is closed short, which the fetch side sees as a wrong file and fetches
from the store.

Plain HTTP/1.0, one connection per request (what urllib sends), a thread per request.
"""

from __future__ import annotations

import logging
import socket
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..artifact.errors import ArtifactNotBuilt
from ..artifact.key import is_key
from ..artifact.manifest import MANIFEST_FILE, path_problem
from ..artifact.store import MODEL_DIR
from ..loader.errors import ConfigError, LoaderError
from ..loader.report import Redactor
from .cache import AgentError, FillPending, NodeCache
from .metrics import AgentMetrics
from .verify import stream_verified

log: Final = logging.getLogger("modeldeploy.cacheagent")
RETRY_AFTER_SECONDS: Final = 5


def status_of(error: BaseException) -> int:
    """The HTTP status for a request that failed with `error`."""
    if isinstance(error, AgentError):
        return error.status
    if isinstance(error, ArtifactNotBuilt):
        return 404
    if isinstance(error, ConfigError):
        return 400
    if isinstance(error, LoaderError):
        return 502  # the store failed us (unreachable, refused, corrupt): the pod may still reach it
    return 500


def route(path: str) -> tuple[str, str, str]:
    """(kind, key, rel) of a request path: kind is manifest, file, metrics, healthz or unknown."""
    parts = urllib.parse.unquote(urllib.parse.urlsplit(path).path).lstrip("/").split("/", 2)
    if parts in (["metrics"], ["healthz"]):
        return parts[0], "", ""
    if len(parts) == 2 and parts[1] == MANIFEST_FILE and is_key(parts[0]):
        return "manifest", parts[0], ""
    if len(parts) == 3 and parts[1] == MODEL_DIR and is_key(parts[0]) and path_problem(parts[2]) is None:
        return "file", parts[0], parts[2]
    return "unknown", "", ""


class AgentServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the cache, its metrics and the log redactor."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # a node's worth of pods starting at once

    def __init__(self, address: str, port: int, cache: NodeCache, metrics: AgentMetrics,
                 redact: Redactor | None = None) -> None:
        if ":" in address:
            self.address_family = socket.AF_INET6
        self.cache, self.metrics = cache, metrics
        self.redact = redact or Redactor()
        super().__init__((address, port), Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Handler(BaseHTTPRequestHandler):
    """One request."""

    server: AgentServer
    server_version = "modeldeploy-cache-agent"
    sys_version = ""
    timeout = 60  # a client that stops reading does not hold a thread forever

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), self.server.redact(format % args))

    def _text(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        body = (text + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _failed(self, error: BaseException) -> None:
        status = status_of(error)
        reason = self.server.redact(" ".join(str(error).split()))
        if status >= 500:
            log.warning("%s: answering %d: %s", self.path, status, reason)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if isinstance(error, FillPending) else None
        self._text(status, reason, headers)

    def do_GET(self) -> None:
        kind, key, rel = route(self.path)
        try:
            if kind == "healthz":
                ok = self.server.cache.root.is_dir()
                self._text(200 if ok else 503, "ok" if ok else "cache directory missing")
            elif kind == "metrics":
                body = generate_latest(self.server.metrics.registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif kind == "manifest":
                self._manifest(key)
            elif kind == "file":
                self._file(key, rel)
            else:
                self._text(404, "not found: GET /{key}/manifest.json, /{key}/model/{path}, /metrics, /healthz")
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as e:
            log.debug("%s: client went away: %s", self.path, e.__class__.__name__)
            self.close_connection = True

    def _manifest(self, key: str) -> None:
        try:
            data = self.server.cache.manifest(key)
        except Exception as e:
            self._failed(e)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.server.metrics.served_bytes.inc(len(data))

    def _file(self, key: str, rel: str) -> None:
        try:
            lease = self.server.cache.open_file(key, rel)
        except Exception as e:
            self._failed(e)
            return
        with lease:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(lease.want.size))
            self.end_headers()
            sent = 0

            def write(chunk: bytes) -> None:
                nonlocal sent
                self.wfile.write(chunk)
                sent += len(chunk)

            try:
                _, problem = stream_verified(lease.file, write, lease.want)
            finally:
                self.server.metrics.served_bytes.inc(sent)
            if problem is not None:
                self.close_connection = True  # short body: the pod fetches this file from the store
                lease.corrupt(problem)
