"""An in-memory view of ModelDeployments and their children, fed by the watches kopf already holds.

Why: a reconcile pass used to GET the ModelDeployment and LIST its Deployments and Pods and GET
every child, ~8 requests per pass; at a thousand models that was most of a core at rest. Every
object a pass reads now comes from here, so a pass at rest sends nothing to the API server.

How it stays correct:
- Filled by one LIST per kind before any pass uses it (`relist`), then by every watch event.
  Until a kind's first LIST, reads of it raise NotSynced and the caller reads from the API.
- An update never goes backwards: an event or a write response older than what is held is
  ignored (resourceVersions of one kind come from one etcd revision counter).
- A pass writes status with the resourceVersion it read as precondition, so a stale object here
  costs a 409 and a retry on fresh data, never a wrong write (see Reconciler).
- The safety relist (rare) replaces a kind's whole content, for events a watch might have missed.

Objects held here are shared: callers must treat them as read-only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .. import constants

# Kinds the cache holds: the ModelDeployments and every child kind the operator owns and watches.
CACHED_KINDS: tuple[str, ...] = (constants.KIND, "Deployment", "Pod", "Service", "PodDisruptionBudget",
                                 "NetworkPolicy")
# With the activator on (scale to zero), also the EndpointSlices of the models' Services: ours and
# the EndpointSlice controller's (which carry the Service's labels), switched at zero and back.
ACTIVATOR_KINDS: tuple[str, ...] = ("EndpointSlice",)

Key = tuple[str, str]  # (namespace, name)


class NotSynced(Exception):
    """The kind has not been listed yet: read from the API server instead."""


class Reader(Protocol):
    """What a pass reads: the API server (Kube) and this cache answer the same two questions."""

    def get_or_none(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...

    def list(self, kind: str, namespace: str | None,
             labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]: ...


def _version(obj: Mapping[str, Any]) -> int | None:
    raw = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def _newer_or_equal(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether `new` may replace `old` (an unparsable version is always accepted)."""
    if old is None:
        return True
    a, b = _version(old), _version(new)
    return a is None or b is None or b >= a


def _matches(obj: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in (labels or {}).items())


class WatchCache:
    """Thread-safe; indexed by kind, namespace, name and the `modeldeploy.io/name` label."""

    def __init__(self, kinds: Iterable[str] = CACHED_KINDS) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {k: {} for k in kinds}
        self._by_model: dict[str, dict[Key, set[str]]] = {k: {} for k in kinds}  # (ns, md name) -> names
        self._synced: set[str] = set()
        # (kind) -> key -> resourceVersion of its deletion: nothing older may bring it back (a LIST
        # taken before the deletion, or a write's response that arrives after the DELETED event).
        self._deleted: dict[str, dict[Key, int]] = {k: {} for k in kinds}
        self.hits = 0
        self.fallbacks = 0

    # --- feeding ---------------------------------------------------------------------------
    def holds(self, kind: str) -> bool:
        return kind in self._objects

    def kinds(self) -> tuple[str, ...]:
        return tuple(self._objects)

    def synced(self, kind: str) -> bool:
        with self._lock:
            return kind in self._synced

    def upsert(self, kind: str, obj: dict[str, Any]) -> bool:
        """Hold `obj` unless a newer version is already held; True when it was taken."""
        if kind not in self._objects:
            return False
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        with self._lock:
            old = self._objects[kind].get(key)
            if not _newer_or_equal(old, obj) or self._buried(kind, key, obj):
                return False
            if old is not None:
                self._unindex(kind, key, old)
            self._objects[kind][key] = obj
            self._index(kind, key, obj)
            return True

    def remove(self, kind: str, obj: Mapping[str, Any]) -> None:
        """A DELETED event: drop the object (unless a newer one with the same name is held)."""
        if kind not in self._objects:
            return
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        with self._lock:
            version = _version(obj)
            if version is not None:
                self._deleted[kind][key] = max(version, self._deleted[kind].get(key, 0))
            old = self._objects[kind].get(key)
            if old is None:
                return
            if (old.get("metadata") or {}).get("uid") != meta.get("uid") and not _newer_or_equal(old, obj):
                return  # a newer object of that name was created since
            self._unindex(kind, key, old)
            del self._objects[kind][key]

    def replace(self, kind: str, namespace: str | None, objects: Iterable[dict[str, Any]],
                list_version: int | None) -> None:
        """A LIST's result becomes the kind's content in `namespace` (None: all namespaces); objects
        the watch delivered after the LIST (newer than `list_version`) are kept."""
        fresh = {((o.get("metadata") or {}).get("namespace") or "", (o.get("metadata") or {}).get("name") or ""): o
                 for o in objects}
        with self._lock:
            held = self._objects[kind]
            for key in [k for k in held if namespace is None or k[0] == namespace]:
                old = held[key]
                newer = list_version is not None and (_version(old) or 0) > list_version
                if key not in fresh and not newer:
                    self._unindex(kind, key, old)
                    del held[key]
            for key, obj in fresh.items():
                old = held.get(key)
                if (old is not None and not _newer_or_equal(old, obj)) or self._buried(kind, key, obj):
                    continue
                if old is not None:
                    self._unindex(kind, key, old)
                held[key] = obj
                self._index(kind, key, obj)
            if list_version is not None:  # deletions the LIST already reflects need no record
                tombs = self._deleted[kind]
                for key in [k for k, v in tombs.items() if v <= list_version
                            and (namespace is None or k[0] == namespace)]:
                    del tombs[key]

    def _buried(self, kind: str, key: Key, obj: Mapping[str, Any]) -> bool:
        """Whether `obj` is a version from before the object's recorded deletion."""
        deleted, version = self._deleted[kind].get(key), _version(obj)
        if deleted is None or version is None:
            return False
        if version > deleted:
            del self._deleted[kind][key]  # created again since
            return False
        return True

    def mark_synced(self, kind: str) -> None:
        with self._lock:
            self._synced.add(kind)

    def _index(self, kind: str, key: Key, obj: Mapping[str, Any]) -> None:
        owner = ((obj.get("metadata") or {}).get("labels") or {}).get(constants.LABEL_NAME)
        if owner:
            self._by_model[kind].setdefault((key[0], owner), set()).add(key[1])

    def _unindex(self, kind: str, key: Key, obj: Mapping[str, Any]) -> None:
        owner = ((obj.get("metadata") or {}).get("labels") or {}).get(constants.LABEL_NAME)
        names = self._by_model[kind].get((key[0], owner or ""))
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._by_model[kind][(key[0], owner or "")]

    # --- reading ---------------------------------------------------------------------------
    def _require(self, kind: str) -> None:
        if kind not in self._synced:
            self.fallbacks += 1
            raise NotSynced(kind)
        self.hits += 1

    def get_or_none(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self._lock:
            if kind not in self._objects:
                raise NotSynced(kind)
            self._require(kind)
            return self._objects[kind].get((namespace or "", name))

    def list(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None,
             ) -> list[dict[str, Any]]:
        with self._lock:
            if kind not in self._objects:
                raise NotSynced(kind)
            self._require(kind)
            held = self._objects[kind]
            owner = (labels or {}).get(constants.LABEL_NAME)
            if owner and namespace is not None:
                names = self._by_model[kind].get((namespace, owner), set())
                found = [held[(namespace, n)] for n in sorted(names)]
            else:
                found = [o for k, o in held.items() if namespace is None or k[0] == namespace]
            return [o for o in found if _matches(o, labels)]

    def size(self) -> dict[str, int]:
        with self._lock:
            return {kind: len(objs) for kind, objs in self._objects.items()}


class CachedReader:
    """Reads from the cache when it holds and has listed the kind, else from the API server.

    A child that is absent here is read from the API before it is created: it may exist without
    our labels (a user's object of the same name), and the ownership check must see it.
    """

    def __init__(self, cache: WatchCache, api: Reader) -> None:
        self.cache = cache
        self.api = api

    def get_or_none(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            found = self.cache.get_or_none(kind, namespace, name)
        except NotSynced:
            return self.api.get_or_none(kind, namespace, name)
        if found is None and kind != constants.KIND:
            return self.api.get_or_none(kind, namespace, name)  # about to be created: look first
        return found

    def list(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None,
             ) -> list[dict[str, Any]]:
        try:
            return self.cache.list(kind, namespace, labels)
        except NotSynced:
            return self.api.list(kind, namespace, labels)


def relist(cache: WatchCache, kube: Any, namespaces: Iterable[str | None]) -> int:
    """One LIST per cached kind and namespace (children by the operator's managed-by label) into
    the cache; marks each kind synced. Returns the number of objects listed."""
    labels = {constants.LABEL_MANAGED_BY: constants.MANAGED_BY}
    namespaces = list(namespaces)
    total = 0
    for kind in cache.kinds():
        for ns in namespaces:
            items, version = kube.list_with_version(kind, ns, None if kind == constants.KIND else labels)
            cache.replace(kind, ns, items, version)
            total += len(items)
        cache.mark_synced(kind)
    return total
