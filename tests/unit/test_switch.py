"""The plain switch (pure): first revision, Recreate, a failed revision kept stopped.

A new revision under `strategy: Canary` is the canary's (tests/unit/test_canary*.py); the replica
math both share is in tests/unit/test_replicas.py.
"""

from __future__ import annotations

import dataclasses

from modeldeploy.planning.observe import RevisionState
from modeldeploy.planning.switch import SwitchInput, SwitchPlan, plan


def rs(rev: str, spec: int, ready: int, *, failure: str = "", starting: float = 0.0,
       trouble: str = "") -> RevisionState:
    return RevisionState(revision=rev, deployment=f"m-{rev}", uid=f"uid-{rev}", spec_replicas=spec, replicas=spec,
                         ready=ready, model_version=rev, load_failure=failure, oldest_starting_seconds=starting,
                         trouble=trouble, trouble_reason="OOMKilled" if trouble else "")


def inp(**kw: object) -> SwitchInput:
    base = dict(desired_replicas=3, gpus_per_pod=1, strategy="Canary", current="b",
                stable="a", failed=None, startup_timeout_seconds=600.0)
    base.update(kw)
    return SwitchInput(**base)  # type: ignore[arg-type]


def test_first_revision_is_stable_at_once() -> None:
    p = plan(inp(stable=None), {})
    assert p == SwitchPlan(replicas={"b": 3}, retire=(), stable="b", failed=None, failure="", promoted=True)


def test_scale_only_change_keeps_revision() -> None:
    p = plan(inp(current="a", desired_replicas=5), {"a": rs("a", 3, 3)})
    assert p.replicas == {"a": 5} and p.stable == "a" and not p.promoted


def test_load_failure_restores_stable_and_stops_new() -> None:
    p = plan(inp(), {"a": rs("a", 2, 2), "b": rs("b", 1, 0, failure="model-loader: sha256 mismatch")})
    assert p.replicas == {"a": 3, "b": 0}
    assert p.failed == "b" and "sha256 mismatch" in p.failure and p.stable == "a"
    assert any(r == "RevisionFailed" and "failed to load" in m for r, m in p.decisions)
    # next pass: remembered as failed, no new decision event
    again = plan(inp(failed="b"), {"a": rs("a", 3, 3), "b": rs("b", 0, 0)})
    assert again.replicas == {"a": 3, "b": 0} and again.failed == "b" and not again.decisions


def test_startup_timeout_counts_from_the_serving_container_start() -> None:
    p = plan(inp(startup_timeout_seconds=60), {"a": rs("a", 3, 3), "b": rs("b", 1, 0, starting=61)})
    assert p.failed == "b" and "startup timeout" in p.failure
    # a pod still pulling its image or loading has no serving container yet: no clock
    assert plan(inp(startup_timeout_seconds=60), {"a": rs("a", 3, 3), "b": rs("b", 1, 0)}).failed is None


def test_trouble_that_may_heal_never_fails_a_revision() -> None:
    first = plan(inp(stable=None), {"b": rs("b", 3, 0, trouble="triton: OOMKilled")})
    assert first.failed is None and first.replicas == {"b": 3}


def test_a_revision_with_a_ready_pod_is_never_failed() -> None:
    p = plan(inp(stable=None), {"b": rs("b", 3, 1, failure="triton: crashed 5 times")})
    assert p.failed is None


def test_spec_change_retires_the_revision_in_between() -> None:
    p = plan(inp(current="c", strategy="Recreate"), {"a": rs("a", 2, 2), "b": rs("b", 1, 1)})
    assert "b" in p.retire and p.stable == "a"


def test_recreate_empties_old_before_new() -> None:
    p1 = plan(inp(strategy="Recreate"), {"a": rs("a", 3, 3)})
    assert p1.replicas == {"a": 0, "b": 0}
    p2 = plan(inp(strategy="Recreate"), {"a": RevisionState("a", "m-a", "u", 0, 0, 0, "1")})
    assert p2.replicas == {"b": 3}
    p3 = plan(inp(strategy="Recreate"), {"a": RevisionState("a", "m-a", "u", 0, 0, 0, "1"), "b": rs("b", 3, 3)})
    assert p3.promoted and p3.replicas == {"b": 3} and "a" in p3.retire


def test_canary_strategy_never_trades_pods_here() -> None:
    """Under Canary a new revision is the canary plan's: the switch only keeps the stable one serving."""
    p = plan(inp(), {"a": rs("a", 3, 3)})
    assert p.replicas == {"a": 3, "b": 0} and p.stable == "a" and p.failed is None


def test_missing_stable_deployment_falls_back_to_current() -> None:
    p = plan(inp(), {"b": rs("b", 3, 3)})
    assert p.stable == "b" and p.replicas == {"b": 3}


def test_a_revision_that_has_served_is_never_failed_for_a_crash_loop() -> None:
    crashing = RevisionState("b", "m-b", "u", 1, 1, 0, "1", load_failure="triton: crashed 7 times without becoming "
                             "Ready: exit code 137", crash_loop=True, oldest_starting_seconds=10_000)
    assert plan(inp(stable=None, startup_timeout_seconds=60), {"b": crashing}).failed == "b"  # never served: fails
    p = plan(inp(stable="b", current="b", startup_timeout_seconds=60, served=frozenset({"b"})), {"b": crashing})
    assert p.failed is None and p.replicas == {"b": 3}  # served before: retried, not failed
    refused = dataclasses.replace(crashing, load_failure="triton: failed to load 'm'", crash_loop=False)
    assert plan(inp(stable="b", current="b", served=frozenset({"b"})), {"b": refused}).failed == "b"
