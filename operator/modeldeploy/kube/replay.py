"""Answer a pass's retries from the reads of its first fresh attempt.

Why: a pass that loses a status race (409) runs again on fresh state. When another controller
writes the same object's status many times a second, a retry that re-reads everything (the
children, the pods, the pods' metrics: a dozen requests) loses the race again and again. The
object itself is always re-read; what the pass saw of its children a few milliseconds earlier,
read fresh from the API server, still stands, so the window between reading the object and
writing its status shrinks to one GET and the decision.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

from .cache import Reader

T = TypeVar("T")


class ReplayReader:
    """Reads through `inner` once per question; the same question later gets the same answer."""

    def __init__(self, inner: Reader) -> None:
        self.inner = inner
        self._answers: dict[Hashable, Any] = {}

    def once(self, key: Hashable, read: Callable[[], T]) -> T:
        """`read()` the first time `key` is asked, its answer after that."""
        if key not in self._answers:
            self._answers[key] = read()
        answer: T = self._answers[key]
        return answer

    def get_or_none(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.once(("get", kind, namespace, name), lambda: self.inner.get_or_none(kind, namespace, name))

    def list(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None,
             ) -> list[dict[str, Any]]:
        key = ("list", kind, namespace, tuple(sorted((labels or {}).items())))
        return self.once(key, lambda: self.inner.list(kind, namespace, labels))
