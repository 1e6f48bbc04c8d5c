"""Switching a model's Service to the activator and back, against a real kube-apiserver and its
EndpointSlice controller (resources/activator.py applied the way the operator applies children:
server-side apply as field manager `modeldeploy`).

No kube-proxy here, so the data path is not exercised; what is checked is what kube-proxy would
read: at zero the Service has no selector and exactly our slice (the controller leaves it alone, and
its own slice, which it stops updating but does not delete, is deleted by us); back to the pods, the
selector returns, the controller's slice appears, ours is gone.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from modeldeploy.kube.client import Kube, NotFound
from modeldeploy.resources import activator as ra
from modeldeploy.resources import build_services
from tests.support.cluster import ClusterHandle, wait_for

pytestmark = pytest.mark.integration


def _slices(cluster: ClusterHandle, namespace: str) -> dict[str, dict]:
    items = cluster.kubectl_json("get", "endpointslices", "-n", namespace, "-l",
                                 "kubernetes.io/service-name=digits")["items"]
    return {s["metadata"]["name"]: s for s in items}


def test_service_switches_to_the_activator_and_back(cluster: ClusterHandle, namespace: str) -> None:
    kube = Kube(cluster.api_client())
    owner = kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "owner", "namespace": namespace}})
    uid = owner["metadata"]["uid"]  # any object of the namespace will do as the owner here
    serving = build_services("digits", namespace, uid, "abc123")[0]
    serving["metadata"]["ownerReferences"][0].update({"apiVersion": "v1", "kind": "ConfigMap", "name": "owner"})
    kube.apply(serving)
    wait_for(lambda: len(_slices(cluster, namespace)) == 1, 20, message="the controller's slice")

    # To zero: the selector goes (server-side apply drops the field we no longer send), our slice comes.
    at_zero = ra.build_activator_service("digits", namespace, uid)
    at_zero["metadata"]["ownerReferences"] = serving["metadata"]["ownerReferences"]
    svc = kube.apply(at_zero)
    assert "selector" not in svc["spec"]
    for s in ra.build_activator_endpointslices("digits", namespace, uid, ["10.244.1.7", "10.244.2.9"]):
        s["metadata"]["ownerReferences"] = serving["metadata"]["ownerReferences"]
        kube.apply(s)
    # The controller's slice stays (frozen with the old pods) once the selector is gone: deleted.
    stale = ra.slices_to_delete(_slices(cluster, namespace).values(), "digits", at_zero=True)
    assert len(stale) == 1 and stale[0].startswith("digits-")
    for name in stale:
        kube.delete("EndpointSlice", namespace, name)
    time.sleep(3)  # the controller leaves a slice it does not manage alone
    ours = _slices(cluster, namespace)
    assert set(ours) == {"digits-activator"}
    assert [e["addresses"] for e in ours["digits-activator"]["endpoints"]] == [["10.244.1.7"], ["10.244.2.9"]]

    # Back to the pods: the selector returns, our slice is deleted, the controller makes its own.
    kube.apply(serving)
    assert ra.slices_to_delete(_slices(cluster, namespace).values(), "digits", at_zero=False) == ["digits-activator"]
    kube.delete("EndpointSlice", namespace, "digits-activator")
    wait_for(lambda: (names := set(_slices(cluster, namespace))) and "digits-activator" not in names, 20,
             message="the controller's slice again, ours gone")
    assert kube.get("Service", namespace, "digits")["spec"]["selector"] == serving["spec"]["selector"]


def test_the_mirrored_slice_of_a_selectorless_service_goes_with_its_endpoints(cluster: ClusterHandle,
                                                                                namespace: str) -> None:
    """kubernetes#91072, what the operator's pass at zero works around: once the selector is gone, the
    endpoints controller leaves the Service's Endpoints as they were and the EndpointSlice mirroring
    controller copies them (the pods about to go) into a slice of its own, which kube-proxy uses
    beside ours and which comes back when deleted alone. Deleting the Endpoints removes it for good."""
    kube = Kube(cluster.api_client())
    owner = kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "owner", "namespace": namespace}})
    uid = owner["metadata"]["uid"]
    serving = build_services("digits", namespace, uid, "abc123")[0]
    serving["metadata"]["ownerReferences"][0].update({"apiVersion": "v1", "kind": "ConfigMap", "name": "owner"})
    kube.apply(serving)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "digits-pod", "namespace": namespace, "labels": serving["spec"]["selector"]},
           "spec": {"containers": [{"name": "triton", "image": "triton",
                                    "ports": [{"containerPort": 8000, "name": "http"}]}]}}
    kube.create(pod)  # a kwok node runs it: Ready, with an address

    def pod_ips() -> set[str]:
        return {a for s in _slices(cluster, namespace).values() for e in s.get("endpoints") or []
                for a in e["addresses"]}
    ip = wait_for(lambda: pod_ips(), 60, message="the pod in the controller's slice")
    wait_for(lambda: cluster.kubectl("get", "endpoints", "digits", "-n", namespace, check=False).returncode == 0,
             30, message="the endpoints controller's Endpoints")

    at_zero = ra.build_activator_service("digits", namespace, uid)
    at_zero["metadata"]["ownerReferences"] = serving["metadata"]["ownerReferences"]
    kube.apply(at_zero)
    for s in ra.build_activator_endpointslices("digits", namespace, uid, ["10.244.1.7"]):
        s["metadata"]["ownerReferences"] = serving["metadata"]["ownerReferences"]
        kube.apply(s)

    def others() -> dict[str, str]:
        return {n: s["metadata"]["labels"].get(ra.LABEL_SLICE_MANAGED_BY, "")
                for n, s in _slices(cluster, namespace).items() if n != "digits-activator"}
    for name in ra.slices_to_delete(_slices(cluster, namespace).values(), "digits", at_zero=True):
        kube.delete("EndpointSlice", namespace, name)
    # Deleting slices alone: the mirroring controller writes one again, with the pod's address.
    mirrored = wait_for(lambda: {n: m for n, m in others().items() if "mirroring" in m}, 20,
                        message="the mirroring controller's slice")
    assert {a for n in mirrored for e in _slices(cluster, namespace)[n]["endpoints"] for a in e["addresses"]} == ip
    # What the operator does: the Endpoints go, then the slices; nothing comes back.
    kube.delete("Endpoints", namespace, "digits")
    for name in ra.slices_to_delete(_slices(cluster, namespace).values(), "digits", at_zero=True):
        with contextlib.suppress(NotFound):
            kube.delete("EndpointSlice", namespace, name)
    time.sleep(5)
    assert others() == {}
    assert set(_slices(cluster, namespace)) == {"digits-activator"}
