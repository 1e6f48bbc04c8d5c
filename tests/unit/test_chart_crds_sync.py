"""The chart's CRD template is generated from crds/: a stale copy fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_chart_crds_are_in_sync() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "hack" / "sync_chart_crds.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
