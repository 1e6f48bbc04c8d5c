"""Timestamps the operator keeps in status parse back to what it wrote."""

from __future__ import annotations

from modeldeploy.api import AutoscalingSpec
from modeldeploy.autoscale.recommender import Memory, Recommendation
from modeldeploy.autoscaler import memory_from_status, status_of
from modeldeploy.timefmt import parse_rfc3339, rfc3339


def test_round_trips() -> None:
    assert rfc3339(1_795_000_000.0) == "2026-11-18T11:06:40Z"
    assert parse_rfc3339(rfc3339(1_795_000_000.0)) == 1_795_000_000.0
    assert parse_rfc3339(rfc3339(1_795_000_000.123456, micro=True)) == 1_795_000_000.123456
    assert rfc3339(None) is None and parse_rfc3339("") is None


def test_autoscaling_memory_survives_status() -> None:
    memory = Memory(panic_until=1_795_000_060.0, below_since=None, last_scale_at=1_795_000_000.0)
    rec = Recommendation(3, 0.084, "panic", "queueTime 84 ms > 50ms target", memory)
    st = status_of(rec, AutoscalingSpec(enabled=True, metric="queueTime", target=0.05, target_text="50ms"))
    assert st["metricValue"] == "84ms" and st["desiredReplicas"] == 3
    assert memory_from_status(st) == memory
