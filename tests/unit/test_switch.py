"""The revision switch, step by step (pure): GPU budget, readiness before scale-down, failures."""

from __future__ import annotations

import pytest

from modeldeploy.planning.observe import RevisionState
from modeldeploy.planning.switch import SwitchInput, SwitchPlan, plan, surge_pods


def rs(rev: str, spec: int, ready: int, *, failure: str = "", unready_age: float = 0.0) -> RevisionState:
    return RevisionState(revision=rev, deployment=f"m-{rev}", uid=f"uid-{rev}", spec_replicas=spec, replicas=spec,
                         ready=ready, model_version=rev, load_failure=failure, oldest_unready_seconds=unready_age)


def inp(**kw: object) -> SwitchInput:
    base = dict(desired_replicas=3, gpus_per_pod=1, max_surge_gpus=0, strategy="Canary", current="b",
                stable="a", failed=None, startup_timeout_seconds=600.0)
    base.update(kw)
    return SwitchInput(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("desired", "gpus", "surge_gpus", "expected"), [
    (3, 1, 0, 0), (3, 1, 1, 1), (3, 2, 3, 1), (3, 2, 4, 2), (4, 0, 0, 1), (8, 0, 0, 2), (1, 0, 0, 1),
])
def test_surge_pods(desired: int, gpus: int, surge_gpus: int, expected: int) -> None:
    assert surge_pods(desired, gpus, surge_gpus) == expected


def test_first_revision_is_stable_at_once() -> None:
    p = plan(inp(stable=None), {})
    assert p == SwitchPlan(replicas={"b": 3}, retire=(), stable="b", failed=None, failure="", promoted=True)


def test_scale_only_change_keeps_revision() -> None:
    p = plan(inp(current="a", desired_replicas=5), {"a": rs("a", 3, 3)})
    assert p.replicas == {"a": 5} and p.stable == "a" and not p.promoted


def _simulate(start: SwitchInput, observed: dict[str, RevisionState], max_gpu_pods: int) -> list[dict[str, int]]:
    """Run passes, letting every requested pod become ready between passes; check the budget each time."""
    trace = []
    for _ in range(20):
        p = plan(start, observed)
        trace.append(dict(p.replicas))
        pods = sum(p.replicas.values())
        assert pods <= max_gpu_pods, (trace, max_gpu_pods)
        if p.promoted:
            return trace
        # the world catches up: old pods go at once, new pods become ready
        observed = {rev: rs(rev, n, n) for rev, n in p.replicas.items()}
    raise AssertionError(f"never promoted: {trace}")


def test_no_surge_trades_one_pod_at_a_time() -> None:
    trace = _simulate(inp(), {"a": rs("a", 3, 3)}, max_gpu_pods=3)
    assert trace == [{"a": 2, "b": 0}, {"a": 2, "b": 1}, {"a": 1, "b": 1}, {"a": 1, "b": 2},
                     {"a": 0, "b": 2}, {"a": 0, "b": 3}, {"b": 3}]


def test_surge_budget_adds_new_pods_before_removing_old() -> None:
    trace = _simulate(inp(max_surge_gpus=1), {"a": rs("a", 3, 3)}, max_gpu_pods=4)
    assert trace[0] == {"a": 3, "b": 1}  # surge first: nobody loses capacity
    assert trace[-1] == {"b": 3}


def test_full_surge_is_blue_green() -> None:
    trace = _simulate(inp(max_surge_gpus=3), {"a": rs("a", 3, 3)}, max_gpu_pods=6)
    assert trace[0] == {"a": 3, "b": 3}


def test_old_pods_only_go_when_new_ones_are_ready() -> None:
    p = plan(inp(max_surge_gpus=1), {"a": rs("a", 3, 3), "b": rs("b", 1, 0)})
    assert p.replicas == {"a": 3, "b": 1}  # new pod not ready yet: keep all old ones


def test_load_failure_restores_stable_and_stops_new() -> None:
    p = plan(inp(), {"a": rs("a", 2, 2), "b": rs("b", 1, 0, failure="model-loader: sha256 mismatch")})
    assert p.replicas == {"a": 3, "b": 0}
    assert p.failed == "b" and "sha256 mismatch" in p.failure and p.stable == "a"
    assert any(r == "RevisionFailed" and "failed to load" in m for r, m in p.decisions)
    # next pass: remembered as failed, no new decision event
    again = plan(inp(failed="b"), {"a": rs("a", 3, 3), "b": rs("b", 0, 0)})
    assert again.replicas == {"a": 3, "b": 0} and again.failed == "b" and not again.decisions


def test_startup_timeout_is_a_failure() -> None:
    p = plan(inp(startup_timeout_seconds=60), {"a": rs("a", 3, 3), "b": rs("b", 1, 0, unready_age=61)})
    assert p.failed == "b" and "startup timeout" in p.failure


def test_spec_change_mid_switch_retires_the_revision_in_between() -> None:
    p = plan(inp(current="c"), {"a": rs("a", 2, 2), "b": rs("b", 1, 1)})
    assert "b" in p.retire and p.stable == "a" and "c" in p.replicas


def test_recreate_empties_old_before_new() -> None:
    p1 = plan(inp(strategy="Recreate"), {"a": rs("a", 3, 3)})
    assert p1.replicas == {"a": 0, "b": 0}
    p2 = plan(inp(strategy="Recreate"), {"a": RevisionState("a", "m-a", "u", 0, 0, 0, "1")})
    assert p2.replicas == {"b": 3}


def test_missing_stable_deployment_falls_back_to_current() -> None:
    p = plan(inp(), {"b": rs("b", 3, 3)})
    assert p.stable == "b" and p.replicas == {"b": 3}
