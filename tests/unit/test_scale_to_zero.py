"""Scale to zero and back (autoscale/zero.py) and the spec fields behind it, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy import api
from modeldeploy.autoscale import zero
from modeldeploy.autoscale.zero import TARGET_ACTIVATOR, TARGET_PODS, ZeroFacts

MINIMAL = {"model": {"source": {"uri": "s3://models/digits/1/model.onnx"}}}
TEN_MIN = 600.0


def auto(**over: Any) -> api.AutoscalingSpec:
    m = {"enabled": True, "minReplicas": 0, "scaleToZeroAfter": "10m", **over}
    return api.parse_spec({**MINIMAL, "autoscaling": m}, name="digits").autoscaling


def test_min_replicas_zero_parses_as_one_pod_while_serving_plus_an_idle_window() -> None:
    a = auto()
    assert a.min_replicas == 1 and a.scale_to_zero_after == TEN_MIN and a.scales_to_zero
    assert not auto(enabled=False).scales_to_zero  # the autoscaler off: spec.replicas rules
    default = api.parse_spec(MINIMAL, name="digits").autoscaling
    assert default.scale_to_zero_after is None and not default.scales_to_zero


@pytest.mark.parametrize(("autoscaling", "field", "words"), [
    ({"minReplicas": 0}, "spec.autoscaling.scaleToZeroAfter", "is required when"),
    ({"minReplicas": 1, "scaleToZeroAfter": "10m"}, "spec.autoscaling.scaleToZeroAfter", "minReplicas: 0"),
    ({"minReplicas": 0, "scaleToZeroAfter": "10s"}, "spec.autoscaling.scaleToZeroAfter", "between 30s"),
    ({"minReplicas": 0, "scaleToZeroAfter": "200h"}, "spec.autoscaling.scaleToZeroAfter", "between 30s"),
    ({"minReplicas": 0, "scaleToZeroAfter": "ten minutes"}, "spec.autoscaling.scaleToZeroAfter", "duration"),
    ({"minReplicas": -1}, "spec.autoscaling.minReplicas", "between 0"),
])
def test_invalid_scale_to_zero_specs_name_the_field(autoscaling: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(api.SpecError) as e:
        api.parse_spec({**MINIMAL, "autoscaling": autoscaling}, name="digits")
    assert e.value.field == field and words in str(e.value)


def test_scale_to_zero_settings_do_not_change_the_revision() -> None:
    plain = api.parse_spec(MINIMAL, name="digits")
    zeroed = api.parse_spec({**MINIMAL, "autoscaling": {"enabled": True, "minReplicas": 0,
                                                         "scaleToZeroAfter": "10m"}}, name="digits")
    assert api.revision_hash(plain) == api.revision_hash(zeroed)


NOW = 10_000.0
CASES: list[tuple[str, dict[str, Any], ZeroFacts, int | None, str]] = [
    # name, autoscaling overrides, facts, replicas decided, words in the reason
    ("off: minReplicas 1", {"minReplicas": 1, "scaleToZeroAfter": None},
     ZeroFacts(NOW, 1, 1, last_request_at=0.0), None, "off"),
    ("idle past the window", {}, ZeroFacts(NOW, 2, 2, last_request_at=NOW - 601), 0, "2 -> 0"),
    ("idle exactly the window", {}, ZeroFacts(NOW, 1, 1, last_request_at=NOW - 600), 0, "1 -> 0"),
    ("a request 5 min ago", {}, ZeroFacts(NOW, 1, 1, last_request_at=NOW - 300), None, "idle for 300s"),
    ("unknown counts are not idle", {}, ZeroFacts(NOW, 1, 1, last_request_at=None), None, "unknown"),
    ("just woke: a full window first", {}, ZeroFacts(NOW, 1, 1, last_request_at=NOW - 5000, up_since=NOW - 60),
     None, "idle for 60s"),
    ("recent demand counts as a request", {}, ZeroFacts(NOW, 1, 1, last_request_at=NOW - 5000,
                                                        last_demand_at=NOW - 10), None, "idle for 10s"),
    ("never during a canary", {}, ZeroFacts(NOW, 2, 2, last_request_at=0.0, canary=True), None, "canary"),
    ("never during a build", {}, ZeroFacts(NOW, 1, 1, last_request_at=0.0, building=True), None, "build"),
    ("never with requests in flight", {}, ZeroFacts(NOW, 1, 1, last_request_at=0.0, pending_requests=3),
     None, "in progress"),
    ("at zero, no demand", {}, ZeroFacts(NOW, 0, 0, last_request_at=0.0, zero_since=NOW - 50), 0, "at zero"),
    ("at zero, old demand (before zero)", {}, ZeroFacts(NOW, 0, 0, last_demand_at=NOW - 700, zero_since=NOW - 50),
     0, "at zero"),
    ("at zero, new demand: 0 -> 1 at once", {}, ZeroFacts(NOW, 0, 0, last_demand_at=NOW - 0.2,
                                                          zero_since=NOW - 50), 1, "0 -> 1"),
    ("at zero with no record of when: any demand wakes", {}, ZeroFacts(NOW, 0, 0, last_demand_at=NOW - 9000), 1,
     "0 -> 1"),
    ("at zero during a canary: demand still wakes", {}, ZeroFacts(NOW, 0, 0, last_demand_at=NOW, zero_since=NOW - 1,
                                                                   canary=True), 1, "0 -> 1"),
]


@pytest.mark.parametrize(("name", "over", "facts", "replicas", "words"), CASES, ids=[c[0] for c in CASES])
def test_decide(name: str, over: dict[str, Any], facts: ZeroFacts, replicas: int | None, words: str) -> None:
    over = {k: v for k, v in over.items() if v is not None}
    spec = auto(**over) if over.get("minReplicas", 0) == 0 else api.parse_spec(
        {**MINIMAL, "autoscaling": {"enabled": True, **over}}, name="digits").autoscaling
    d = zero.decide(spec, facts)
    assert d.replicas == replicas, d
    assert words in d.reason, d.reason


def test_recheck_in_says_when_the_window_ends() -> None:
    d = zero.decide(auto(), ZeroFacts(NOW, 1, 1, last_request_at=NOW - 450))
    assert d.replicas is None and d.recheck_in == pytest.approx(150)


@pytest.mark.parametrize(("scales", "replicas", "ready", "activators", "target"), [
    (False, 0, 0, 2, TARGET_PODS),  # not a scale-to-zero model: never the activator
    (True, 1, 1, 2, TARGET_PODS),  # serving
    (True, 3, 1, 2, TARGET_PODS),  # one Ready pod is enough
    (True, 0, 1, 2, TARGET_ACTIVATOR),  # going to zero: the activator takes over before the last pod goes
    (True, 0, 0, 2, TARGET_ACTIVATOR),  # at zero
    (True, 1, 0, 2, TARGET_ACTIVATOR),  # waking: held until the first pod is Ready
    (True, 0, 0, 0, TARGET_PODS),  # no Ready activator: pointing at it would black-hole requests
])
def test_service_target(scales: bool, replicas: int, ready: int, activators: int, target: str) -> None:
    spec = auto() if scales else api.parse_spec(MINIMAL, name="digits").autoscaling
    assert zero.service_target(zero.holds_at_zero(spec, 1, routed=False), replicas, ready, activators) == target


@pytest.mark.parametrize(("enabled", "min_replicas", "spec_replicas", "routed", "holds"), [
    (True, 0, 1, False, True),  # scales to zero itself
    (True, 1, 0, True, False),  # the operator autoscales with a floor of one: spec.replicas is ignored
    (False, 1, 0, False, True),  # kubectl scale / HPA / KEDA took spec.replicas to 0
    (False, 1, 2, True, True),  # raised again after zero: the route stays for the held requests
    (False, 1, 2, False, False),  # never at zero: the activator has nothing to do with it
])
def test_holds_at_zero(enabled: bool, min_replicas: int, spec_replicas: int, routed: bool, holds: bool) -> None:
    extra = {"scaleToZeroAfter": "30s"} if min_replicas == 0 else {}
    spec = api.parse_spec({**MINIMAL, "autoscaling": {"enabled": enabled, "minReplicas": min_replicas,
                                                      "maxReplicas": 3, **extra}}, name="digits").autoscaling
    assert zero.holds_at_zero(spec, spec_replicas, routed) is holds


@pytest.mark.parametrize(("previous", "before", "after", "expected"), [
    (100.0, {"a": 5.0}, {"a": 5.0}, 100.0),  # nothing moved: the previous time stands
    (100.0, {"a": 5.0}, {"a": 7.0}, NOW),  # a request since
    (100.0, {"a": 5.0}, {"a": 1.0}, NOW),  # counter went down: the pod restarted and counted
    (100.0, {"a": 5.0}, {"a": 5.0, "b": 0.0}, 100.0),  # a new pod that served nothing
    (100.0, {"a": 5.0}, {"a": 5.0, "b": 2.0}, NOW),  # a new pod that served
    (100.0, {"a": 5.0}, {}, 100.0),  # pods gone: nothing served
    (100.0, {"a": 5.0}, {"a": None}, None),  # a failed scrape: unknown, never idle
    (100.0, None, {"a": 5.0}, None),  # no earlier read (operator restart): unknown
    (None, {"a": 0.0}, {"a": 0.0}, NOW - 2),  # never served: idle since the first read (a model nobody calls)
])
def test_last_request_at(previous: float | None, before: dict[str, float] | None, after: dict[str, float | None],
                         expected: float | None) -> None:
    assert zero.last_request_at(previous, NOW, before, NOW - 2, after) == expected
