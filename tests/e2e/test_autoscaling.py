"""Autoscaling on real Triton metrics: load through the Service adds pods within seconds (the
leading operator replica killed in the burst), and they go again after the delay once the load
stops, with no failed request while they drain."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import service_answers
from tests.support import operator as op
from tests.support.cluster import ClusterHandle, wait_for
from tests.support.load import Load
from tests.support.specs import autoscaled_digits

pytestmark = pytest.mark.e2e

NS = "autoscaling-e2e"

NAME = "auto"


def _md(tc: ClusterHandle) -> dict[str, Any]:
    return tc.kubectl_json("get", "modeldeployment", NAME, "-n", NS)


def test_scales_up_on_load_and_down_after_the_delay(real_cluster: ClusterHandle, stack: dict[str, Any]) -> None:
    real_cluster.apply(autoscaled_digits(NAME), NS)
    wait_for(lambda: _md(real_cluster).get("status", {}).get("readyReplicas") == 1, 240, interval=1,
             message="one pod serving")
    ip = real_cluster.kubectl_json("get", "service", NAME, "-n", NS)["spec"]["clusterIP"]
    url = f"{ip}:8000"
    # Ready in status comes before kube-proxy has programmed the Service: wait for one answer.
    wait_for(lambda: service_answers(url), 30, interval=0.5, message="the Service answers")

    with Load(url, senders=4, pause=0) as heavy:
        began = time.monotonic()
        wait_for(lambda: (_md(real_cluster)["status"].get("autoscaling") or {}).get("desiredReplicas", 1) >= 2, 30,
                 interval=0.5, message="a scale-up decision")
        decided = time.monotonic() - began
        # The leader dies in the burst: the standby takes over and carries the scale-up on.
        _, _, failover = op.kill_leader(real_cluster)
        wait_for(lambda: _md(real_cluster)["status"].get("readyReplicas") == 3, 180, interval=1,
                 message="three pods serving")
    assert heavy.ok > 100 and heavy.failed == [], heavy.failed[:3]
    assert decided <= 10, f"first scale-up decision took {decided:.1f}s"
    assert failover <= 15, f"the standby took {failover:.1f}s to lead"

    with Load(url, senders=1, pause=0.25) as light:
        wait_for(lambda: (_md(real_cluster)["status"].get("autoscaling") or {}).get("desiredReplicas") == 1, 120,
                 interval=1, message="scale-down decision after the delay")
        wait_for(lambda: len(real_cluster.kubectl_json("get", "pods", "-n", NS, "-l",
                                                        f"modeldeploy.io/name={NAME}")["items"]) == 1,
                 120, interval=1, message="extra pods drained and gone")
    assert light.ok > 20 and light.failed == [], light.failed[:3]
    reasons = [e["message"] for e in real_cluster.kubectl_json("get", "events", "-n", NS)["items"]
               if e["involvedObject"].get("name") == NAME and e["reason"] == "Scaled"]
    assert any("inferenceRate" in r and "1 -> " in r for r in reasons), reasons
    assert any("-> 1" in r for r in reasons), reasons
    real_cluster.kubectl("delete", "modeldeployment", NAME, "-n", NS, "--wait=false")
