"""A real HorizontalPodAutoscaler owns the replicas of a ModelDeployment through its scale subresource.

With `autoscaling.enabled: false`, spec.replicas is the truth and anyone may set it: the operator
follows what the HPA writes and never writes a replica count back. (The HPA controller of the real
kube-controller-manager enforces minReplicas/maxReplicas before it needs any metrics, so no metrics
server is needed to see it act.)
"""

from __future__ import annotations

from typing import Any

from tests.support.cluster import ClusterHandle, wait_for
from tests.support.specs import model_deployment

MD = "modeldeployment"


def _hpa(name: str, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name},
            "spec": {"scaleTargetRef": {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
                                        "name": name},
                     "minReplicas": min_replicas, "maxReplicas": max_replicas,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                         "type": "Utilization", "averageUtilization": 80}}}]}}


def _deployment_replicas(tc: ClusterHandle, ns: str, name: str) -> list[int]:
    items = tc.kubectl_json("get", "deployments", "-n", ns, "-l", f"modeldeploy.io/name={name}")["items"]
    return [d["spec"]["replicas"] for d in items]


def test_an_hpa_scales_the_model_deployment_and_the_operator_follows(cluster: ClusterHandle, operator: Any,
                                                                      namespace: str) -> None:
    cluster.apply(model_deployment("hpa", replicas=1), namespace)
    wait_for(lambda: cluster.kubectl_json("get", MD, "hpa", "-n", namespace).get("status", {}).get("phase")
             == "Ready", 60, message="ready with one replica")
    cluster.apply(_hpa("hpa", 3, 5), namespace)

    def scaled_to(n: int) -> bool:
        md = cluster.kubectl_json("get", MD, "hpa", "-n", namespace)
        st = md.get("status", {})
        return md["spec"]["replicas"] == n and _deployment_replicas(cluster, namespace, "hpa") == [n] \
            and st.get("readyReplicas") == n

    wait_for(lambda: scaled_to(3), 90, interval=1, message="HPA raised replicas to its minimum (3)")
    # The HPA reads the count back through the scale subresource (status.replicas) on its next sync.
    wait_for(lambda: cluster.kubectl_json("get", "hpa", "hpa", "-n", namespace)["status"].get("currentReplicas")
             == 3, 60, interval=1, message="the HPA sees 3 current replicas")

    md = cluster.kubectl_json("get", MD, "hpa", "-n", namespace, "--show-managed-fields")
    owners = [m["manager"] for m in md["metadata"]["managedFields"]
              if m.get("subresource") == "scale" or "f:replicas" in str(m.get("fieldsV1", {}).get("f:spec", {}))]
    assert owners and "modeldeploy" not in owners, owners  # the HPA wrote it, the operator never did

    cluster.kubectl("patch", "hpa", "hpa", "-n", namespace, "--type=merge", "-p",
                    '{"spec": {"minReplicas": 1, "maxReplicas": 2}}')
    wait_for(lambda: scaled_to(2), 90, interval=1, message="HPA lowered replicas to its maximum (2)")
