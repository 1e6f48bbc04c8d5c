"""Weighted canary routing through a Gateway API HTTPRoute, with the real Gateway API CRDs installed.

The HTTPRoute `<name>` sends the step's weight to `<name>-canary` and the rest to `<name>-stable`
whatever the pod counts; nothing goes to a canary before it is promoted or after it is aborted.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import ClusterHandle, wait_for
from tests.support.specs import model_deployment

ROOT = Path(__file__).resolve().parents[2]
MD = "modeldeployment"
ROLLOUT = {"strategy": "Canary", "maxSurgeGpus": 0,
           "steps": [{"weight": 20, "pause": "1s"}, {"weight": 60, "pause": "1s"}],
           "analysis": {"interval": "1h"},  # kwok pods have no metrics: every move here is by annotation
           "trafficRouting": {"gatewayAPI": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gw"}]}}}


@pytest.fixture(scope="module")
def gateway_api(cluster: ClusterHandle) -> None:
    folder = subprocess.run([str(ROOT / "hack" / "fetch-gateway-api-crds.sh")], check=True, capture_output=True,
                            text=True).stdout.strip()
    cluster.kubectl("apply", "--server-side", "-f", folder)
    wait_for(lambda: cluster.kubectl("wait", "--for=condition=Established", "crd/httproutes.gateway.networking.k8s.io",
                                     "--timeout=5s", check=False).returncode == 0, 60, message="HTTPRoute API served")


def _weights(tc: ClusterHandle, ns: str, name: str) -> dict[str, int] | None:
    proc = tc.kubectl("get", "httproute", name, "-n", ns, "-o", "json", check=False)
    if proc.returncode != 0:
        return None
    route = json.loads(proc.stdout)
    return {b["name"]: b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]}


def _canary(tc: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    return tc.kubectl_json("get", MD, name, "-n", ns).get("status", {}).get("canary") or {}


def test_route_weights_follow_the_canary(cluster: ClusterHandle, gateway_api: None, operator: Any,
                                         namespace: str) -> None:
    cluster.apply(model_deployment("routed", replicas=5, rollout=ROLLOUT), namespace)
    wait_for(lambda: _weights(cluster, namespace, "routed") == {"routed-stable": 100, "routed-canary": 0}, 60,
             message="route to the stable revision only")
    route = cluster.kubectl_json("get", "httproute", "routed", "-n", namespace)
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                            "name": "public", "namespace": "gw"}]  # the CRD's defaults filled in
    assert route["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"

    cluster.apply(model_deployment("routed", version="2", replicas=5, rollout=ROLLOUT), namespace)
    wait_for(lambda: _weights(cluster, namespace, "routed") == {"routed-stable": 80, "routed-canary": 20}, 60,
             message="step 1: 20% of requests to the canary")
    can = _canary(cluster, namespace, "routed")
    assert can["phase"] == "Progressing" and can["canaryReplicas"] == 1  # pods 1 of 5, requests exactly 20%
    selector = cluster.kubectl_json("get", "service", "routed-canary", "-n", namespace)["spec"]["selector"]
    assert selector["modeldeploy.io/revision"] == can["revision"]

    cluster.kubectl("annotate", MD, "routed", "-n", namespace, "modeldeploy.io/promote=now")
    wait_for(lambda: _canary(cluster, namespace, "routed").get("phase") == "Promoted", 60, message="promoted")
    wait_for(lambda: _weights(cluster, namespace, "routed") == {"routed-stable": 100, "routed-canary": 0}, 30,
             message="after promotion the stable Service (now the new revision) takes everything")
    stable = cluster.kubectl_json("get", "service", "routed-stable", "-n", namespace)["spec"]["selector"]
    assert stable["modeldeploy.io/revision"] == can["revision"]

    cluster.apply(model_deployment("routed", version="3", replicas=5, rollout=ROLLOUT), namespace)
    wait_for(lambda: _weights(cluster, namespace, "routed") == {"routed-stable": 80, "routed-canary": 20}, 60,
             message="a new canary at step 1")
    cluster.kubectl("annotate", MD, "routed", "-n", namespace, "modeldeploy.io/abort=true")
    wait_for(lambda: _weights(cluster, namespace, "routed") == {"routed-stable": 100, "routed-canary": 0}, 30,
             message="an aborted canary gets no requests")
