"""RFC 3339 timestamps in status (pure): what the operator persists must parse back exactly."""

from __future__ import annotations

import datetime as dt

_SECONDS = "%Y-%m-%dT%H:%M:%SZ"
_MICROS = "%Y-%m-%dT%H:%M:%S.%fZ"


def rfc3339(t: float | None, *, micro: bool = False) -> str | None:
    """Epoch seconds as UTC RFC 3339; `micro` keeps microseconds (state that must round-trip)."""
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime(_MICROS if micro else _SECONDS)


def rfc3339_at(now: dt.datetime) -> str:
    """A moment as status writes times (seconds, UTC)."""
    return dt.datetime.fromtimestamp(now.timestamp(), dt.UTC).strftime(_SECONDS)


def parse_rfc3339(s: str | None) -> float | None:
    """Epoch seconds from either form rfc3339() writes; None for empty."""
    if not s:
        return None
    return dt.datetime.strptime(s, _MICROS if "." in s else _SECONDS).replace(tzinfo=dt.UTC).timestamp()
