"""Where the route table comes from: the operator's ConfigMap (watched) or a file (polled; tests,
or a ConfigMap mounted as a volume). A document that does not parse keeps the previous table."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from .routes import Route, RoutesError, RouteTable, parse_routes

log: Final = logging.getLogger("modeldeploy.activator")


class Routes:
    """The current table (swapped whole, read without locks from the event loop).

    A model removed from the document stays routable for `grace_s` more: the operator removes a
    route once the model's Service points at its pods again, and connections kube-proxy already
    sent to the activator (or rules not yet updated on some node) still arrive for a while; they
    are forwarded, not refused as unknown. A model listed again, or changed, is current at once.
    """

    def __init__(self, on_change: Callable[[RouteTable], None] | None = None, grace_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._current = RouteTable()
        self._table = RouteTable()
        self._leaving: dict[str, tuple[Route, float]] = {}  # key -> (route, until)
        self.loaded = False
        self._on_change = on_change
        self.grace_s = grace_s
        self._clock = clock

    def table(self) -> RouteTable:
        if self._leaving and self._clock() >= min(until for _, until in self._leaving.values()):
            self._rebuild()
        return self._table

    def _rebuild(self) -> None:
        now = self._clock()
        self._leaving = {k: (r, u) for k, (r, u) in self._leaving.items()
                         if u > now and k not in self._current.by_key}
        self._table = RouteTable.of([*self._current.routes, *(r for r, _ in self._leaving.values())])

    def update(self, text: str | bytes | None) -> None:
        try:
            table = parse_routes(text or "")
        except RoutesError as e:
            log.warning("routes not applied (keeping the previous %d): %s", len(self._current.routes), e)
            return
        if not self.loaded or table.routes != self._current.routes:
            log.info("routes: %d model(s) at zero", len(table.routes))
        until = self._clock() + self.grace_s
        for key, route in self._current.by_key.items():
            if key not in table.by_key:
                self._leaving[key] = (route, until)
        self._current, self.loaded = table, True
        self._rebuild()
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
