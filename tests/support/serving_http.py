"""A real HTTP file server in a thread, with scripted failures, for the loader's fetch tests."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FileServer:
    """Files by path; `fail_first[path] = (n, status)` answers the first n requests with that status."""

    files: dict[str, bytes] = field(default_factory=dict)
    fail_first: dict[str, tuple[int, int]] = field(default_factory=dict)
    truncate: set[str] = field(default_factory=set)  # announce the full length, send half, close
    requests: Counter[str] = field(default_factory=Counter)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            state.requests[path] += 1
            state.headers_seen.append(dict(self.headers))
            n, status = state.fail_first.get(path, (0, 0))
            if state.requests[path] <= n:
                self.send_error(status)
                return
            body = state.files.get(path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if path in state.truncate and state.requests[path] == 1:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def serving(state: FileServer) -> Iterator[FileServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
