"""Where a benchmark's numbers go: the --json file behind docs/benchmarks.md's tables."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_json(path: Path | None, result: Mapping[str, Any]) -> None:
    """Save `result` to `path` (nothing without --json); values JSON cannot hold become strings."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
