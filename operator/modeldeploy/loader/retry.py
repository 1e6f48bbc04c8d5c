"""Retries with exponential backoff, for transient network failures only.

A 403 or 404 will not heal by waiting, so only TransientFetchError is retried; the kubelet's own
init-container back-off covers everything longer than one loader run.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import TransientFetchError
from .report import log

T = TypeVar("T")


def backoff_delays(attempts: int, base_s: float = 0.5, cap_s: float = 8.0) -> list[float]:
    """Delays between `attempts` tries: base, 2*base, 4*base ... capped (before jitter)."""
    return [min(cap_s, base_s * 2**i) for i in range(max(0, attempts - 1))]


def with_retries(
    action: Callable[[], T],
    what: str,
    attempts: int = 5,
    base_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `action`; on TransientFetchError wait and try again, up to `attempts` tries in all."""
    delays = backoff_delays(attempts, base_s)
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except TransientFetchError as e:
            if attempt == attempts:
                raise TransientFetchError(f"{e} (gave up after {attempts} attempts)") from e
            delay = delays[attempt - 1] * random.uniform(0.8, 1.2)
            log.warning("%s: %s; retrying in %.1fs (attempt %d/%d)", what, e, delay, attempt + 1, attempts)
            sleep(delay)
    raise AssertionError("unreachable")
