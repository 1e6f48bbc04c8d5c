"""Files generated from others and kept in the repository: write them, or check they are current."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(target: Path, wanted: str, *, check: bool, remedy: str, root: Path) -> int:
    """With `check`, exit status 1 and how to fix it when `target` is not `wanted`; else write it."""
    shown = str(target.relative_to(root)) if target.is_relative_to(root) else str(target)
    if check:
        if not target.exists() or target.read_text() != wanted:
            print(f"{shown} is stale: run `{remedy}`", file=sys.stderr)
            return 1
        return 0
    target.write_text(wanted)
    print(f"wrote {shown}")
    return 0
