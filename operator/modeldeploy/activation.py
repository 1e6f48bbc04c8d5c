"""The operator's side of scale to zero: what it reads from the activator and what it writes for it.

- **Demand** (0 -> 1 at once): the activator's demand Lease is watched by name; a model's entry
  newer than the last one seen calls `on_demand` (the autoscaler wakes it and a pass is queued),
  without waiting for the next tick.
- **The activator's Ready pods**: its Service's EndpointSlices are watched; a model at zero gets
  an EndpointSlice listing them (resources/activator.py), so a change queues those models.
- **Routes**: the leader publishes every model that may go to zero into the routes ConfigMap the
  activator watches, before any Service points at the activator (a pass switches a Service only
  once its route is in the last document written). Every scale-to-zero model is published, not
  only those at zero, so its ClusterIPs are there before the Service switches; the route's
  `serving` flag turning false on the way to zero closes the activator's gate.

Decisions live in autoscale/zero.py and resources/activator.py; this module only moves facts.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from . import constants
from .activator.routes import Route, RoutesError, dump_routes, parse_routes
from .config import Settings
from .kube.activator import ROUTES_KEY, parse_demand, watch_objects
from .kube.client import Kube
from .resources.activator import activator_addresses

log = logging.getLogger(__name__)

Key = tuple[str, str]


class ActivatorLink:
    """Thread-safe; one per operator process (every replica watches, only the leader writes)."""

    def __init__(self, kube: Kube, settings: Settings, on_demand: Callable[[str, str, float], None],
                 on_activator_change: Callable[[], None]) -> None:
        self.kube, self.settings = kube, settings
        self.on_demand, self.on_activator_change = on_demand, on_activator_change
        self._lock = threading.Lock()
        self._demand: dict[Key, float] = {}
        self._addresses: list[str] = []
        self._routes: dict[Key, Route] | None = None  # what the ConfigMap holds; None: not read yet
        self._write_lock = threading.Lock()

    # --- reads (from the watches) -------------------------------------------------------------
    def addresses(self) -> list[str]:
        """The activator's Ready pod addresses ([] before its Service's slices are listed)."""
        with self._lock:
            return list(self._addresses)

    def demand_at(self, namespace: str, name: str) -> float | None:
        with self._lock:
            return self._demand.get((namespace, name))

    def _demand_changed(self, leases: list[dict[str, Any]]) -> None:
        seen: dict[Key, dt.datetime] = {}
        for lease in leases:
            for key, at in parse_demand((lease.get("metadata") or {}).get("annotations")).items():
                if key not in seen or seen[key] < at:
                    seen[key] = at
        newer = []
        with self._lock:
            for key, at in seen.items():
                t = at.timestamp()
                if self._demand.get(key, 0.0) < t:
                    self._demand[key] = t
                    newer.append((key, t))
        for (namespace, name), t in newer:
            try:
                self.on_demand(namespace, name, t)
            except Exception as e:  # the next tick sees the same demand
                log.warning("%s/%s: demand from the activator not acted on yet: %s", namespace, name, e)

    def _slices_changed(self, slices: list[dict[str, Any]]) -> None:
        found = activator_addresses(slices)
        with self._lock:
            changed, self._addresses = found != self._addresses, found
        if changed:
            log.info("activator: %d Ready replica(s) %s", len(found), ", ".join(found))
            self.on_activator_change()

    def start(self) -> threading.Event:
        """Watch the demand Lease and the activator Service's EndpointSlices until the event is set."""
        stop = threading.Event()
        ns = self.settings.activator_namespace
        threading.Thread(target=watch_objects, name="activator-demand", daemon=True, args=(
            self.kube, "Lease", ns, self._demand_changed, stop),
            kwargs={"field_selector": f"metadata.name={self.settings.activator_demand_lease}"}).start()
        threading.Thread(target=watch_objects, name="activator-endpoints", daemon=True, args=(
            self.kube, "EndpointSlice", ns, self._slices_changed, stop),
            kwargs={"label_selector": f"kubernetes.io/service-name={self.settings.activator_service}"}).start()
        return stop

    # --- routes (the leader writes) ---------------------------------------------------------
    def _load_routes(self) -> dict[Key, Route]:
        """What the ConfigMap holds now (a new leader starts from it, so no model at zero loses its
        route while the passes come round)."""
        cm = self.kube.get_or_none("ConfigMap", self.settings.activator_namespace, self.settings.activator_routes)
        text = ((cm or {}).get("data") or {}).get(ROUTES_KEY, "")
        try:
            table = parse_routes(text or "{}")
        except RoutesError as e:
            log.warning("activator routes ConfigMap is not valid (%s): it is written again", e)
            return {}
        return {(r.namespace, r.name): r for r in table.routes}

    def _current(self) -> dict[Key, Route]:
        """The routes document as last written or read; read from the ConfigMap the first time.
        The caller holds the write lock."""
        with self._lock:
            current = self._routes
        if current is None:
            current = self._load_routes()
            with self._lock:
                self._routes = current
        return current

    def has_route(self, namespace: str, name: str) -> bool:
        """Whether the routes document holds this model."""
        with self._lock:
            routes = self._routes
        if routes is None:
            with self._write_lock:
                routes = self._current()
        return (namespace, name) in routes

    def published(self, route: Route) -> bool:
        with self._lock:
            return self._routes is not None and self._routes.get((route.namespace, route.name)) == route

    def publish(self, route: Route, known: Callable[[], set[Key]] | None = None) -> bool:
        """Make `route` part of the routes document (one write when it changed); True when it was written.

        `known`: the models that exist; routes of models gone meanwhile are dropped in the same write."""
        return self._update((route.namespace, route.name), route, known)

    def withdraw(self, namespace: str, name: str) -> bool:
        """Drop a model's route (it no longer scales to zero); True when it was written."""
        return self._update((namespace, name), None, None)

    def _update(self, key: Key, route: Route | None, known: Callable[[], set[Key]] | None) -> bool:
        with self._write_lock:
            current = self._current()
            if current.get(key) == route:
                return False
            wanted = {k: r for k, r in current.items() if k != key}
            if route is not None:
                wanted[key] = route
            if known is not None:
                alive = known()
                wanted = {k: r for k, r in wanted.items() if k in alive or k == key}
            self.kube.apply({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": self.settings.activator_routes, "namespace": self.settings.activator_namespace,
                             "labels": {constants.LABEL_MANAGED_BY: constants.MANAGED_BY,
                                        "app.kubernetes.io/component": "activator"}},
                "data": {ROUTES_KEY: dump_routes(list(wanted.values()))},
            })
            with self._lock:
                self._routes = wanted
            return True
