"""Where the route table comes from: the operator's ConfigMap (watched) or a file (polled; tests,
or a ConfigMap mounted as a volume). A document that does not parse keeps the previous table."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from .routes import RoutesError, RouteTable, parse_routes

log: Final = logging.getLogger("modeldeploy.activator")


class Routes:
    """The current table (swapped whole, read without locks from the event loop)."""

    def __init__(self, on_change: Callable[[RouteTable], None] | None = None) -> None:
        self._table = RouteTable()
        self.loaded = False
        self._on_change = on_change

    def table(self) -> RouteTable:
        return self._table

    def update(self, text: str | bytes | None) -> None:
        try:
            table = parse_routes(text or "")
        except RoutesError as e:
            log.warning("routes not applied (keeping the previous %d): %s", len(self._table.routes), e)
            return
        if not self.loaded or table.routes != self._table.routes:
            log.info("routes: %d model(s) at zero", len(table.routes))
        self._table, self.loaded = table, True
        if self._on_change is not None:
            self._on_change(table)

    def from_config_map(self, obj: dict[str, Any] | None, key: str) -> None:
        self.update(((obj or {}).get("data") or {}).get(key) or "")


def poll_file(routes: Routes, path: Path, stop: threading.Event, interval_s: float = 0.5) -> None:
    """Reload `path` whenever its modification time or size changes, until `stop`."""
    seen: tuple[float, int] | None = None
    while not stop.is_set():
        try:
            st = path.stat()
            sig = (st.st_mtime, st.st_size)
            if sig != seen:
                seen = sig
                routes.update(path.read_bytes())
        except FileNotFoundError:
            if seen is not None or not routes.loaded:
                seen = None
                routes.update("")
        stop.wait(interval_s)
