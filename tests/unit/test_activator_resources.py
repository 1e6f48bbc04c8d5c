"""What points a model at zero to the activator (resources/activator.py): route, Service, EndpointSlice."""

from __future__ import annotations

from modeldeploy import constants as c
from modeldeploy.activator.routes import dump_routes, parse_routes, resolve_http
from modeldeploy.kube.client import without_none
from modeldeploy.planning import drift
from modeldeploy.resources import activator as ra
from modeldeploy.resources import build_services


def test_route_goes_to_the_stable_service_by_clusterip_when_known() -> None:
    r = ra.route_for("digits", "ml", "digits-model", ["10.96.0.12"], stable_cluster_ip="10.96.0.13")
    assert (r.http, r.grpc) == ("10.96.0.13:8000", "10.96.0.13:8001")
    assert ra.route_for("digits", "ml", "d", [], stable_cluster_ip="fd00::13").http == "[fd00::13]:8000"
    by_dns = ra.route_for("digits", "ml", "d", ["None", ""])
    assert by_dns.http == "digits-stable.ml.svc:8000" and by_dns.cluster_ips == ()
    table = parse_routes(dump_routes([r]))  # what the operator writes is what the activator reads
    assert resolve_http(table, "10.96.0.12:8000", "/v2/models/digits-model/infer").route == r
    assert resolve_http(table, "digits.ml.svc", "/v2/health/ready").route == r


def test_service_at_zero_is_the_same_service_without_a_selector() -> None:
    serving = build_services("digits", "ml", "uid-1", "abc123")[0]
    at_zero = ra.build_activator_service("digits", "ml", "uid-1")
    assert at_zero["spec"]["selector"] is None  # "must be absent": the drift check compares it too
    assert "selector" not in without_none(at_zero)["spec"]  # and apply leaves it out (removing ours)
    assert drift.needs_apply(at_zero, serving)  # the live Service still selecting pods is switched
    assert not drift.needs_apply(at_zero, without_none(at_zero))
    assert at_zero["metadata"] == serving["metadata"]
    assert at_zero["spec"]["ports"] == serving["spec"]["ports"]


def test_endpointslice_lists_ready_activators_by_port_name() -> None:
    slices = [{"endpoints": [
        {"addresses": ["10.244.1.7"], "conditions": {"ready": True}},
        {"addresses": ["10.244.2.9"], "conditions": {"ready": False}},  # not ready: left out
        {"addresses": ["10.244.3.4"], "conditions": {"ready": True, "terminating": True}},
        {"addresses": ["10.244.0.2"]},  # no conditions: ready
    ]}, {"endpoints": [{"addresses": ["fd00::5"], "conditions": {"ready": True}}]}]
    addrs = ra.activator_addresses(slices)
    assert addrs == ["10.244.0.2", "10.244.1.7", "fd00::5"]
    v4, v6 = ra.build_activator_endpointslices("digits", "ml", "uid-1", addrs)
    assert v4["addressType"] == "IPv4" and v6["addressType"] == "IPv6"
    assert v4["metadata"]["name"] == "digits-activator" and v6["metadata"]["name"] == "digits-activator-v6"
    assert v4["metadata"]["labels"]["kubernetes.io/service-name"] == "digits"
    # not the EndpointSlice controller's own value: it would delete the slice
    assert v4["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "operator.modeldeploy.io"
    assert v4["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert [e["addresses"] for e in v4["endpoints"]] == [["10.244.0.2"], ["10.244.1.7"]]
    assert {p["name"] for p in v4["ports"]} == {c.PORT_NAME_HTTP, c.PORT_NAME_GRPC}  # no metrics at zero
    assert ra.build_activator_endpointslices("digits", "ml", "uid-1", []) == []


def test_slices_to_delete_when_switching() -> None:
    def s(name: str, svc: str, managed: str) -> dict:
        return {"metadata": {"name": name, "labels": {"kubernetes.io/service-name": svc,
                                                      "endpointslice.kubernetes.io/managed-by": managed}}}

    live = [s("digits-x7k2p", "digits", "endpointslice-controller.k8s.io"),
            s("digits-activator", "digits", "operator.modeldeploy.io"),
            s("digits-stable-abcde", "digits-stable", "endpointslice-controller.k8s.io")]
    assert ra.slices_to_delete(live, "digits", at_zero=True) == ["digits-x7k2p"]
    assert ra.slices_to_delete(live, "digits", at_zero=False) == ["digits-activator"]
