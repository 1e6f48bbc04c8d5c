"""The operator's settings reach every pod it builds (the chart's download cap included)."""

from __future__ import annotations

from typing import Any

from modeldeploy.config import Settings
from modeldeploy.reconciler import Reconciler


def test_the_charts_download_cap_reaches_the_pods() -> None:
    kube: Any = None  # images() reads settings only
    settings = Settings(max_download_bytes=123_456_789)
    assert Reconciler(kube, settings).images().max_download_bytes == 123_456_789
