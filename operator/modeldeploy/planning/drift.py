"""Does a live object still hold every field we want? (pure)

Server-side apply of an unchanged object is free for etcd but is still a write request; comparing
first lets a pass with nothing to change send nothing, while any drift in a field we own (a
user's edit, a deleted label) is still seen and healed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": 10**-3}


def _quantity(value: Any) -> float | None:
    m = _QUANTITY.match(str(value))
    if not m:
        return None
    unit = m.group(2)
    scale = _BINARY.get(unit, _DECIMAL.get(unit))
    if scale is None:
        return None
    try:
        return float(m.group(1)) * scale
    except ValueError:
        return None


def _scalar_equal(want: Any, have: Any) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return type(want) is type(have) and want == have
    if want == have:
        return True
    if isinstance(want, (int, float, str)) and isinstance(have, (int, float, str)):
        # The API server normalises quantities ("1000m" -> "1", 2 -> "2").
        a, b = _quantity(want), _quantity(have)
        return a is not None and b is not None and abs(a - b) < 1e-9
    return False


def contains(live: Any, want: Any) -> bool:
    """True when every field of `want` is present in `live` with an equal value.

    Extra fields in `live` (defaults, other managers' fields, status) are ignored; lists must have
    the same length and match element by element.
    """
    if isinstance(want, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(k in live and contains(live[k], v) for k, v in want.items()
                   if v is not None) and all(live.get(k) is None for k, v in want.items() if v is None)
    if isinstance(want, list):
        if not isinstance(live, list) or len(live) != len(want):
            return False
        return all(contains(a, b) for a, b in zip(live, want, strict=True))
    return _scalar_equal(want, live)


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Whether `desired` must be (re)applied over `live`."""
    if live is None:
        return True
    want = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "status")}
    return not contains(live, want)
