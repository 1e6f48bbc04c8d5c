"""Step-by-step progress with elapsed time, so a newcomer sees what a long set-up is doing."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_START = time.monotonic()


def say(message: str) -> None:
    """Print one progress line prefixed with the time since the tool started."""
    print(f"[localcluster +{time.monotonic() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


@contextmanager
def step(title: str) -> Iterator[None]:
    """Announce a step and report how long it took."""
    began = time.monotonic()
    say(f"{title} ...")
    yield
    say(f"{title}: done in {time.monotonic() - began:.1f}s")
