"""The local object store client: MinIO's transient 503 is retried, anything else is not."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from localcluster.objectstore import Store


class _Busy(BaseHTTPRequestHandler):
    """Answers 503 to the first `busy` requests, then `final`."""

    busy = 0
    final = 200
    seen = 0

    def do_PUT(self) -> None:
        type(self).seen += 1
        code = 503 if type(self).seen <= type(self).busy else type(self).final
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Busy]]]:
    handler = type("Busy", (_Busy,), {"busy": 0, "final": 200, "seen": 0})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()


def test_bucket_creation_waits_out_a_starting_minio(server: tuple[str, type[_Busy]]) -> None:
    endpoint, handler = server
    handler.busy = 3
    Store(endpoint, "k", "s", busy_retry_s=10).ensure_bucket("models")
    assert handler.seen == 4


def test_a_minio_that_stays_busy_is_reported(server: tuple[str, type[_Busy]]) -> None:
    endpoint, handler = server
    handler.busy = 1000
    with pytest.raises(RuntimeError, match="creating bucket models: HTTP 503"):
        Store(endpoint, "k", "s", busy_retry_s=0.5).ensure_bucket("models")


def test_other_errors_are_not_retried(server: tuple[str, type[_Busy]]) -> None:
    endpoint, handler = server
    handler.final = 403
    with pytest.raises(RuntimeError, match="HTTP 403"):
        Store(endpoint, "k", "s").ensure_bucket("models")
    assert handler.seen == 1
