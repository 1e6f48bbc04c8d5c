"""Reading a Job pod's termination message: our CLIs leave one JSON line there as their result."""

from __future__ import annotations

import json
from typing import Any


def last_json_object(message: str, field: str, kind: type) -> dict[str, Any] | None:
    """The last line of `message` that is a JSON object whose `field` is a `kind` (log lines a
    library printed before it, or a truncated line, are skipped)."""
    for line in reversed((message or "").strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get(field), kind):
            return data
    return None
