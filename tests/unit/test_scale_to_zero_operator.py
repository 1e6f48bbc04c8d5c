"""Scale to zero in the operator: the autoscaler's idle and demand decisions, and what a pass
writes for a model at zero (a selectorless Service with the activator's EndpointSlice, before the
Deployment goes to 0; the route published first; status says ScaledToZero or Activating).

The Kubernetes API is faked here (MemoryKube); tests/integration and tests/e2e use the real one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest

from modeldeploy import autoscaler as autoscaler_mod
from modeldeploy import constants as c
from modeldeploy.activator.routes import Route
from modeldeploy.autoscaler import Autoscaler
from modeldeploy.config import Settings
from modeldeploy.kube.client import without_none
from modeldeploy.metrics.parse import TritonMetrics
from modeldeploy.reconciler import Reconciler
from modeldeploy.resources import activator as ra
from modeldeploy.resources.networkpolicy import ENV, NetworkPolicySettings, build_network_policies, parse
from tests.integration.invalid_specs import BASE_SPEC, apply_patch
from tests.support import chart
from tests.unit.test_built_revisions import MemoryKube

needs_helm = pytest.mark.skipif(chart.helm() is None, reason="helm is not cached (make binaries)")
NS = "ml"
SPEC = apply_patch(BASE_SPEC, {"autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 3,
                                               "scaleToZeroAfter": "30s"}, "replicas": 1})


class FakeLink:
    """ActivatorLink's reads and writes, in memory."""

    def __init__(self, addresses: list[str] | None = None, fail_publish: bool = False) -> None:
        self._addresses = ["10.244.9.7"] if addresses is None else addresses
        self.routes: dict[tuple[str, str], Route] = {}
        self.demand: dict[tuple[str, str], float] = {}
        self.fail_publish = fail_publish
        self.order: list[str] = []

    def addresses(self) -> list[str]:
        return list(self._addresses)

    def demand_at(self, namespace: str, name: str) -> float | None:
        return self.demand.get((namespace, name))

    def publish(self, route: Route, known: Callable[[], set[tuple[str, str]]] | None = None) -> bool:
        if self.fail_publish:
            raise RuntimeError("API server away")
        self.order.append("route")
        changed = self.routes.get((route.namespace, route.name)) != route
        self.routes[(route.namespace, route.name)] = route
        return changed

    def withdraw(self, namespace: str, name: str) -> bool:
        return self.routes.pop((namespace, name), None) is not None

    def has_route(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.routes


class OrderedKube(MemoryKube):
    """Records the order of child writes (what a client would see switch first)."""

    def __init__(self, link: FakeLink) -> None:
        super().__init__()
        self.link = link

    def apply(self, obj: Any, *, force: bool = True) -> dict[str, Any]:
        self.link.order.append(f"{obj['kind']} {obj['metadata']['name']}")
        return super().apply(without_none(obj), force=force)

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        self.link.order.append(f"scale {kind} {name} {replicas}")
        return super().scale(kind, namespace, name, replicas)


def _world(status: dict[str, Any] | None = None, link: FakeLink | None = None,
           spec: dict[str, Any] | None = None) -> tuple[OrderedKube, Reconciler, FakeLink]:
    link = link or FakeLink()
    kube = OrderedKube(link)
    md = kube.create({"apiVersion": c.API_VERSION, "kind": c.KIND,
                      "metadata": {"name": "digits", "namespace": NS, "generation": 1},
                      "spec": copy.deepcopy(spec or SPEC)})
    if status:
        kube.patch_status(c.KIND, NS, "digits", status, md["metadata"]["resourceVersion"])
    rec = Reconciler(kube, Settings(activator_service="modeldeploy-activator",  # type: ignore[arg-type]
                                    activator_namespace="modeldeploy-system"))
    rec.link = link  # type: ignore[assignment]
    rec.retry_failed_passes = False
    return kube, rec, link


def _pod_ready(kube: MemoryKube, dep: dict[str, Any], ready: bool = True) -> None:
    """What the ReplicaSet controller and the kubelet would do: one (Ready) pod of the Deployment."""
    meta = {"name": dep["metadata"]["name"] + "-1", "namespace": NS,
            "labels": dict(dep["spec"]["template"]["metadata"]["labels"]),
            "creationTimestamp": "2026-12-03T10:00:00Z"}
    kube.objects[("Pod", NS, meta["name"])] = {
        "kind": "Pod", "metadata": meta,
        "status": {"phase": "Running", "podIP": "10.244.0.9",
                   "conditions": [{"type": "Ready", "status": str(ready)}],
                   "containerStatuses": [{"name": "triton", "ready": ready, "restartCount": 0,
                                          "state": {"running": {}}}]}}
    dep["status"] = {"replicas": 1, "readyReplicas": int(ready), "availableReplicas": int(ready),
                     "updatedReplicas": 1, "observedGeneration": 1}
    kube.objects[("Deployment", NS, dep["metadata"]["name"])]["status"] = dep["status"]


def _controller_slice(ready: bool) -> dict[str, Any]:
    return {"kind": "EndpointSlice", "metadata": {"name": "digits-x1", "namespace": NS, "labels": {
        ra.LABEL_SERVICE_NAME: "digits", ra.LABEL_SLICE_MANAGED_BY: "endpointslice-controller.k8s.io"}},
        "endpoints": [{"addresses": ["10.244.0.9"], "conditions": {"ready": ready}}]}


def _md(kube: MemoryKube) -> dict[str, Any]:
    md = kube.get_or_none(c.KIND, NS, "digits")
    assert md is not None
    return md


def _ready_reason(md: dict[str, Any]) -> str:
    return next(x for x in md["status"]["conditions"] if x["type"] == "Ready")["reason"]


def test_a_model_at_zero_points_its_service_at_the_activator_before_its_pods_go() -> None:
    kube, rec, link = _world()
    rec.reconcile(NS, "digits")  # one pod asked for, not Ready yet: the activator holds requests meanwhile
    (dep,) = kube.of("Deployment")
    assert dep["spec"]["replicas"] == 1
    assert "selector" not in kube.get_or_none("Service", NS, "digits")["spec"]  # type: ignore[index]
    assert (NS, "digits") in link.routes  # every model that may go to zero is published, at zero or not
    _pod_ready(kube, dep)
    rec.reconcile(NS, "digits")  # a Ready pod: the Service selects the pods again
    assert kube.get_or_none("Service", NS, "digits")["spec"]["selector"]  # type: ignore[index]
    assert _md(kube)["status"]["phase"] == "Ready"
    assert link.routes[(NS, "digits")].serving  # the activator learns its Service is on the pods
    assert [s["metadata"]["name"] for s in kube.of("EndpointSlice")] == ["digits-activator"]  # until ...
    kube.objects[("EndpointSlice", NS, "digits-x1")] = _controller_slice(ready=True)
    rec.reconcile(NS, "digits")  # ... the controller's slice lists the Ready pod: ours goes
    assert [s["metadata"]["name"] for s in kube.of("EndpointSlice")] == ["digits-x1"]

    md = _md(kube)  # the autoscaler decided: no requests for the window
    kube.patch_status(c.KIND, NS, "digits", {"autoscaling": {"desiredReplicas": 0, "reason": "no requests for 31s"}},
                      md["metadata"]["resourceVersion"])
    link.order.clear()
    rec.reconcile(NS, "digits")

    svc = kube.get_or_none("Service", NS, "digits")
    assert svc is not None and "selector" not in svc["spec"]
    (slice_,) = kube.of("EndpointSlice")  # the controller's, frozen with the pods that go, is deleted
    assert slice_["metadata"]["labels"][ra.LABEL_SERVICE_NAME] == "digits"
    assert [e["addresses"] for e in slice_["endpoints"]] == [["10.244.9.7"]]
    (dep,) = kube.of("Deployment")
    assert dep["spec"]["replicas"] == 0
    assert not link.routes[(NS, "digits")].serving  # its gate closes: nothing forwarded to the pod that goes
    # the route is there, then the Service and its slice switch, and only then the pods go
    assert link.order.index("route") < link.order.index("Service digits") \
        < link.order.index("EndpointSlice digits-activator") < link.order.index(f"Deployment {dep['metadata']['name']}")
    md = _md(kube)
    assert md["status"]["phase"] == "ScaledToZero" and _ready_reason(md) == "ScaledToZero"
    assert "no requests for 31s" in next(x for x in md["status"]["conditions"] if x["type"] == "Ready")["message"]
    assert md["status"]["readyText"] == "1/0"  # its pod is still terminating
    for key in [k for k in kube.objects if k[0] == "Pod"]:
        del kube.objects[key]
    kube.objects[("Deployment", NS, dep["metadata"]["name"])]["status"] = {"replicas": 0}
    rec.reconcile(NS, "digits")
    md = _md(kube)
    assert md["status"]["readyText"] == "0/0" and md["status"]["phase"] == "ScaledToZero"
    # the `-stable` Service keeps its selector: the activator forwards through it
    assert kube.get_or_none("Service", NS, "digits-stable")["spec"]["selector"]  # type: ignore[index]


def test_at_zero_the_endpoints_left_by_the_controller_go_with_their_mirrored_slice() -> None:
    """kubernetes#91072: once the selector is gone the endpoints controller leaves `<name>`'s
    Endpoints as they were, and the mirroring controller copies them (pods about to die) into a
    slice kube-proxy uses beside ours; deleting only the slice, it comes back."""
    kube, rec, _link = _world({"autoscaling": {"desiredReplicas": 0}})
    kube.objects[("Endpoints", NS, "digits")] = {"kind": "Endpoints", "metadata": {"name": "digits", "namespace": NS},
                                                 "subsets": [{"addresses": [{"ip": "10.244.0.9"}]}]}
    mirrored = _controller_slice(ready=True)
    mirrored["metadata"]["name"] = "digits-m1"
    mirrored["metadata"]["labels"][ra.LABEL_SLICE_MANAGED_BY] = "endpointslicemirroring-controller.k8s.io"
    kube.objects[("EndpointSlice", NS, "digits-m1")] = mirrored
    rec.reconcile(NS, "digits")
    assert [s["metadata"]["name"] for s in kube.of("EndpointSlice")] == ["digits-activator"]
    assert kube.get_or_none("Endpoints", NS, "digits") is None
    kube.objects[("Endpoints", NS, "other")] = {"kind": "Endpoints", "metadata": {"name": "other", "namespace": NS}}
    rec.reconcile(NS, "digits")
    assert kube.get_or_none("Endpoints", NS, "other") is not None  # only its own Service's


def test_no_activator_replica_ready_keeps_the_service_on_the_pods() -> None:
    kube, rec, _link = _world({"autoscaling": {"desiredReplicas": 0}}, FakeLink(addresses=[]))
    rec.reconcile(NS, "digits")
    assert kube.get_or_none("Service", NS, "digits")["spec"]["selector"]  # type: ignore[index]
    assert kube.of("EndpointSlice") == []


def test_a_route_that_cannot_be_written_stops_the_switch() -> None:
    kube, rec, _link = _world({"autoscaling": {"desiredReplicas": 0}}, FakeLink(fail_publish=True))
    with pytest.raises(RuntimeError):
        rec.reconcile(NS, "digits")
    assert kube.of("EndpointSlice") == []
    assert all(o["kind"] != "Service" or o["spec"].get("selector") for o in kube.objects.values())


def test_woken_model_without_a_ready_pod_is_activating_and_stays_on_the_activator() -> None:
    kube, rec, link = _world({"autoscaling": {"desiredReplicas": 1, "upSince": "2026-12-03T10:00:00.000000Z"}})
    rec.reconcile(NS, "digits")
    (dep,) = kube.of("Deployment")
    assert dep["spec"]["replicas"] == 1
    assert "selector" not in kube.get_or_none("Service", NS, "digits")["spec"]  # type: ignore[index]
    md = _md(kube)
    assert _ready_reason(md) == "Activating" and md["status"]["phase"] == "Loading"
    assert link.routes[(NS, "digits")].pods == ()  # no pod address yet
    _pod_ready(kube, dep, ready=False)  # the pod has its address, Triton still loading
    rec.reconcile(NS, "digits")
    assert link.routes[(NS, "digits")].pods == ("10.244.0.9",)  # the activator probes it directly
    _pod_ready(kube, dep)
    rec.reconcile(NS, "digits")  # Ready: the Service selects it, the route lists no pod
    assert kube.get_or_none("Service", NS, "digits")["spec"]["selector"]  # type: ignore[index]
    assert link.routes[(NS, "digits")].pods == ()


def test_without_the_activator_min_replicas_zero_keeps_one_pod() -> None:
    kube, rec, _link = _world({"autoscaling": {"desiredReplicas": 0}})
    rec.link = None
    rec.reconcile(NS, "digits")
    (dep,) = kube.of("Deployment")
    assert dep["spec"]["replicas"] == 1
    assert kube.of("EndpointSlice") == []
    (note,) = _md(kube)["status"]["warnings"]  # said, not silently ignored
    assert "minReplicas is 0" in note and "activator.enabled" in note
    assert "ScaleToZeroUnavailable" in [e["reason"] for e in kube.of("Event")]


def test_a_model_that_stops_scaling_to_zero_loses_its_route() -> None:
    kube, rec, link = _world()
    rec.reconcile(NS, "digits")
    assert (NS, "digits") in link.routes
    md = _md(kube)
    md["spec"]["autoscaling"]["minReplicas"] = 1
    md["spec"]["autoscaling"].pop("scaleToZeroAfter")
    kube.objects[(c.KIND, NS, "digits")]["spec"] = md["spec"]
    rec.reconcile(NS, "digits")
    assert (NS, "digits") not in link.routes


def _set_spec_replicas(kube: MemoryKube, n: int) -> None:
    """What kubectl scale, an HPA or KEDA do through the scale subresource."""
    kube.objects[(c.KIND, NS, "digits")]["spec"]["replicas"] = n


def test_replicas_scaled_to_zero_from_outside_hold_requests_in_the_activator_until_raised() -> None:
    external = apply_patch(BASE_SPEC, {"replicas": 1, "autoscaling": {"enabled": False}})  # spec.replicas owned outside
    kube, rec, link = _world(spec=external)
    rec.reconcile(NS, "digits")
    (dep,) = kube.of("Deployment")
    _pod_ready(kube, dep)
    rec.reconcile(NS, "digits")
    assert (NS, "digits") not in link.routes  # never at zero yet: nothing for the activator
    assert kube.get_or_none("Service", NS, "digits")["spec"]["selector"]  # type: ignore[index]

    _set_spec_replicas(kube, 0)  # KEDA took it to zero
    link.order.clear()
    rec.reconcile(NS, "digits")
    (dep,) = kube.of("Deployment")
    assert dep["spec"]["replicas"] == 0
    assert "selector" not in kube.get_or_none("Service", NS, "digits")["spec"]  # type: ignore[index]
    assert link.order.index("route") < link.order.index("Service digits") \
        < link.order.index(f"Deployment {dep['metadata']['name']}")
    md = _md(kube)
    ready = next(x for x in md["status"]["conditions"] if x["type"] == "Ready")
    assert md["status"]["phase"] == "ScaledToZero" and ready["reason"] == "ScaledToZero"
    assert "spec.replicas is 0" in ready["message"] and "until spec.replicas is raised" in ready["message"]

    _set_spec_replicas(kube, 1)  # KEDA saw the held requests (the activator's gauge) and raised it
    for key in [k for k in kube.objects if k[0] == "Pod"]:
        del kube.objects[key]
    rec.reconcile(NS, "digits")
    (dep,) = kube.of("Deployment")
    assert dep["spec"]["replicas"] == 1
    # no Ready pod yet: the Service stays on the activator, which keeps the route and holds the requests
    assert "selector" not in kube.get_or_none("Service", NS, "digits")["spec"]  # type: ignore[index]
    assert (NS, "digits") in link.routes and _ready_reason(_md(kube)) == "Activating"
    _pod_ready(kube, dep)
    rec.reconcile(NS, "digits")
    assert kube.get_or_none("Service", NS, "digits")["spec"]["selector"]  # type: ignore[index]
    assert _md(kube)["status"]["phase"] == "Ready"
    assert (NS, "digits") in link.routes  # kept for the next time it goes to zero


def test_a_model_the_operator_autoscales_with_a_floor_never_gets_a_route() -> None:
    floor = apply_patch(BASE_SPEC, {"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 2},
                                    "replicas": 0})  # spec.replicas is ignored while the operator autoscales
    kube, rec, link = _world(spec=floor)
    rec.reconcile(NS, "digits")
    assert link.routes == {} and kube.get_or_none("Service", NS, "digits")["spec"]["selector"]  # type: ignore[index]


def test_controller_slice_ready_waits_for_a_ready_pod() -> None:
    ours = ra.build_activator_endpointslices("digits", NS, "u", ["10.0.0.1"])[0]
    theirs = _controller_slice(ready=False)
    assert not ra.controller_slice_ready([ours, theirs], "digits")
    theirs["endpoints"][0]["conditions"]["ready"] = True
    assert ra.controller_slice_ready([ours, theirs], "digits")
    assert ra.slices_to_delete([ours, theirs], "digits", at_zero=False) == ["digits-activator"]
    assert ra.slices_to_delete([ours, theirs], "digits", at_zero=True) == ["digits-x1"]


def test_apply_leaves_out_fields_set_to_none() -> None:
    assert without_none({"spec": {"selector": None, "ports": [{"name": "http", "x": None}]}}) == \
        {"spec": {"ports": [{"name": "http"}]}}


# --- the autoscaler ------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


class CountingSource:
    """Each Ready pod's Triton request counter, as the scrape would return it."""

    def __init__(self) -> None:
        self.requests = 5.0
        self.pending = 0.0
        self.fail = False

    def pods(self, namespace: str, pods: dict[str, str], model: str) -> dict[str, TritonMetrics | None]:
        return {p: None if self.fail else TritonMetrics(success=self.requests, pending=self.pending) for p in pods}


def _serving_pod() -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": "digits-abc-1", "namespace": NS,
                                        "labels": {c.LABEL_NAME: "digits", c.LABEL_MANAGED_BY: c.MANAGED_BY}},
            "status": {"podIP": "10.244.0.9", "conditions": [{"type": "Ready", "status": "True"}]}}


@pytest.fixture
def scaler_world(monkeypatch: pytest.MonkeyPatch) -> tuple[MemoryKube, Autoscaler, FakeLink, Clock, CountingSource]:
    clock = Clock()
    monkeypatch.setattr(autoscaler_mod.time, "time", clock)
    link = FakeLink()
    kube = MemoryKube()
    md = kube.create({"apiVersion": c.API_VERSION, "kind": c.KIND,
                      "metadata": {"name": "digits", "namespace": NS, "generation": 1}, "spec": copy.deepcopy(SPEC)})
    kube.patch_status(c.KIND, NS, "digits", {"autoscaling": {"desiredReplicas": 1}}, md["metadata"]["resourceVersion"])
    kube.objects[("Pod", NS, "digits-abc-1")] = _serving_pod()
    scaler = Autoscaler(kube, Settings())  # type: ignore[arg-type]
    source = CountingSource()
    scaler.metrics = source  # type: ignore[assignment]
    scaler.link = link  # type: ignore[assignment]
    return kube, scaler, link, clock, source


def _tick(kube: MemoryKube, scaler: Autoscaler, clock: Clock, seconds: float) -> dict[str, Any]:
    clock.t += seconds
    scaler.tick([_md_of(kube)])
    return _md_of(kube)["status"]["autoscaling"]


def _md_of(kube: MemoryKube) -> dict[str, Any]:
    md = kube.get_or_none(c.KIND, NS, "digits")
    assert md is not None
    return md


def test_an_idle_model_goes_to_zero_after_the_window_and_not_before(scaler_world: Any) -> None:
    kube, scaler, _link, clock, _source = scaler_world
    assert _tick(kube, scaler, clock, 0)["desiredReplicas"] == 1  # first read: nothing known yet
    assert _tick(kube, scaler, clock, 2)["desiredReplicas"] == 1
    assert _tick(kube, scaler, clock, 26)["desiredReplicas"] == 1  # 28 s since the first read
    st = _tick(kube, scaler, clock, 3)  # 31 s
    assert st["desiredReplicas"] == 0 and st["zeroSince"] and "no requests for 31s" in st["reason"]
    assert [e["reason"] for e in kube.of("Event")] == ["ScaledToZero"]


def test_requests_pending_or_counted_keep_it_up(scaler_world: Any) -> None:
    kube, scaler, _link, clock, source = scaler_world
    _tick(kube, scaler, clock, 0)
    for _ in range(20):
        source.requests += 1  # a request every 2 s
        assert _tick(kube, scaler, clock, 2)["desiredReplicas"] == 1
    source.pending = 3  # a long request still inside Triton, no counter moved for the window
    assert _tick(kube, scaler, clock, 40)["desiredReplicas"] == 1


def test_a_failed_scrape_is_not_idleness(scaler_world: Any) -> None:
    kube, scaler, _link, clock, source = scaler_world
    source.fail = True
    for _ in range(5):
        assert _tick(kube, scaler, clock, 20)["desiredReplicas"] == 1
    source.fail = False
    _tick(kube, scaler, clock, 2)
    _tick(kube, scaler, clock, 2)  # two good reads: idle from the first
    source.fail = True  # scrapes fail past the window: still not idle
    assert _tick(kube, scaler, clock, 40)["desiredReplicas"] == 1
    source.requests += 3  # requests came while the scrape failed: seen at the next good read
    source.fail = False
    assert _tick(kube, scaler, clock, 2)["desiredReplicas"] == 1
    assert _tick(kube, scaler, clock, 29)["desiredReplicas"] == 1  # 29 s after the request was seen
    assert _tick(kube, scaler, clock, 2)["desiredReplicas"] == 0


def test_never_to_zero_without_a_ready_activator_or_during_a_canary(scaler_world: Any) -> None:
    kube, scaler, link, clock, _source = scaler_world
    link._addresses = []
    _tick(kube, scaler, clock, 0)
    assert _tick(kube, scaler, clock, 60)["desiredReplicas"] == 1
    link._addresses = ["10.244.9.7"]
    md = _md_of(kube)
    kube.patch_status(c.KIND, NS, "digits", {"canaryRevision": "abc", "canary": {"phase": "Progressing"}},
                      md["metadata"]["resourceVersion"])
    assert _tick(kube, scaler, clock, 60)["desiredReplicas"] == 1


def test_demand_newer_than_going_to_zero_wakes_it_at_once(scaler_world: Any) -> None:
    kube, scaler, _link, clock, _source = scaler_world
    _tick(kube, scaler, clock, 0)
    st = _tick(kube, scaler, clock, 31)
    assert st["desiredReplicas"] == 0
    went = clock.t
    assert not scaler.wake(_md_of(kube), went - 5)  # demand from before it went idle
    assert _tick(kube, scaler, clock, 60)["desiredReplicas"] == 0  # stays at zero, no scrape needed
    clock.t += 1
    assert scaler.wake(_md_of(kube), clock.t)
    st = _md_of(kube)["status"]["autoscaling"]
    assert st["desiredReplicas"] == 1 and st.get("zeroSince") is None and st["upSince"]
    assert sorted(e["reason"] for e in kube.of("Event")) == ["ScaledFromZero", "ScaledToZero"]
    # woken: a full window again before it may go back to zero (its first request may still be held)
    assert _tick(kube, scaler, clock, 2)["desiredReplicas"] == 1
    assert _tick(kube, scaler, clock, 20)["desiredReplicas"] == 1


def test_a_new_revision_at_zero_brings_a_pod_back_for_the_rollout(scaler_world: Any) -> None:
    kube, scaler, _link, clock, _source = scaler_world
    _tick(kube, scaler, clock, 0)
    assert _tick(kube, scaler, clock, 31)["desiredReplicas"] == 0
    md = _md_of(kube)
    kube.patch_status(c.KIND, NS, "digits", {"canaryRevision": "def"}, md["metadata"]["resourceVersion"])
    st = _tick(kube, scaler, clock, 2)
    assert st["desiredReplicas"] == 1 and "rolls out" in st["reason"]


# --- the chart and the model pods' NetworkPolicy --------------------------------------------------
@needs_helm
def test_chart_wires_the_operator_to_the_activator_only_when_it_is_enabled() -> None:
    def operator_env(*sets: str) -> dict[str, str]:
        dep = chart.operator_deployment(chart.render(*sets))
        return {e["name"]: e.get("value", "") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}

    off = operator_env("activator.enabled=false")
    assert off["MD_ACTIVATOR_SERVICE"] == "" and "activator" not in json.loads(off[ENV])
    on = operator_env()  # on by default
    assert on["MD_ACTIVATOR_SERVICE"] == "md-modeldeploy-activator"
    assert on["MD_ACTIVATOR_NAMESPACE"] == "modeldeploy-system"
    policy = parse(on[ENV])
    assert policy.activator_pod_labels == {"app.kubernetes.io/instance": "md",
                                           "app.kubernetes.io/name": "modeldeploy-activator"}
    docs = chart.render("activator.enabled=true")
    (svc,) = [d for d in chart.by_kind(docs, "Service") if d["metadata"]["name"] == on["MD_ACTIVATOR_SERVICE"]]
    assert svc["spec"]["selector"]["app.kubernetes.io/name"] == "modeldeploy-activator"
    (link_role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "md-modeldeploy-activator-link"]
    named = {tuple(r.get("resourceNames", ())): set(r["verbs"]) for r in link_role["rules"]}
    assert named[("md-modeldeploy-activator-routes",)] == {"get", "patch"}
    assert named[("md-modeldeploy-activator-demand",)] == {"get", "list", "watch"}
    assert all(r.get("resourceNames") or r["verbs"] in (["create"], ["get", "list", "watch"])
               for r in link_role["rules"])  # nothing unnamed beyond create and reading slices
    for sets in ((), ("watchNamespaces={ml}",)):
        roles = [d for d in chart.render("activator.enabled=true", *sets) if d["kind"] in ("ClusterRole", "Role")]
        slices = [r for role in roles for r in role.get("rules", []) if "endpointslices" in r.get("resources", [])
                  and "delete" in r["verbs"]]
        assert len(slices) == 1, sets
        no_slices = [r for role in chart.render("activator.enabled=false", *sets)
                     if role["kind"] in ("ClusterRole", "Role")
                     for r in role.get("rules", []) if "endpointslices" in r.get("resources", [])]
        assert no_slices == [], sets  # off: no right on EndpointSlices at all
    assert not any("secrets" in r.get("resources", []) for d in docs if d["kind"] in ("Role", "ClusterRole")
                   for r in d.get("rules", []))


def test_model_pods_admit_the_activators_forwards_on_http_and_grpc_only() -> None:
    settings = NetworkPolicySettings(enabled=True, operator_namespace="modeldeploy-system",
                                     client_namespace_selector={"matchLabels": {"team": "a"}},
                                     activator_pod_labels={"app.kubernetes.io/name": "modeldeploy-activator"})
    serving = build_network_policies("digits", NS, "u", "abc", settings)[0]
    rules = [r for r in serving["spec"]["ingress"]
             if any("podSelector" in f and "namespaceSelector" in f for f in r["from"])]
    assert rules == [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                                      "modeldeploy-system"}},
                                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "modeldeploy-activator"}}}],
                      "ports": [{"port": 8000, "protocol": "TCP"}, {"port": 8001, "protocol": "TCP"}]}]
    without = build_network_policies("digits", NS, "u", "abc",
                                     dataclasses.replace(settings, activator_pod_labels=None))[0]
    assert len(without["spec"]["ingress"]) == len(serving["spec"]["ingress"]) - 1


def test_the_link_reads_the_routes_once_and_writes_only_changes() -> None:
    """ActivatorLink's routes document: a new leader starts from what the ConfigMap holds (has_route
    before any write), an unchanged route is not written again, withdraw drops it."""
    from modeldeploy.activation import ActivatorLink
    from modeldeploy.activator.routes import dump_routes
    from modeldeploy.kube.activator import ROUTES_KEY

    kube = MemoryKube()
    settings = Settings(activator_service="modeldeploy-activator",  # type: ignore[arg-type]
                        activator_namespace="modeldeploy-system")
    route = ra.route_for("digits", NS, "digits", ["10.96.0.7"], "10.96.0.8")
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": settings.activator_routes, "namespace": "modeldeploy-system"},
                "data": {ROUTES_KEY: dump_routes([route])}})
    link = ActivatorLink(kube, settings, on_demand=lambda *a: None, on_activator_change=lambda: None)
    assert link.has_route(NS, "digits") and not link.has_route(NS, "other")
    assert link.publish(route) is False  # already there: no write
    serving = dataclasses.replace(route, serving=True)
    assert link.publish(serving) is True and link.published(serving)
    cm = kube.get_or_none("ConfigMap", "modeldeploy-system", settings.activator_routes)
    assert cm is not None and '"serving": true' in cm["data"][ROUTES_KEY]
    assert link.withdraw(NS, "digits") is True and not link.has_route(NS, "digits")
