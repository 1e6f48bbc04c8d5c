"""The local cluster is real: real scheduler, real admission, real GPU accounting (kwok nodes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from localcluster import cluster as lc
from localcluster import controlplane, process
from localcluster.config import ClusterConfig
from tests.support.cluster import ClusterHandle, wait_for

pytestmark = pytest.mark.integration


def _gpu_deployment(name: str, gpus: int, replicas: int = 1) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "main", "image": "example.invalid/gpu-workload:1",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
            },
        },
    }


def test_nodes_report_gpu_capacity(cluster: ClusterHandle) -> None:
    nodes = cluster.kubectl_json("get", "nodes", "-l", "type=kwok")["items"]
    assert len(nodes) >= 3
    for node in nodes:
        assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"]
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"


def test_gpu_deployment_is_scheduled_and_runs(cluster: ClusterHandle, namespace: str) -> None:
    cluster.apply(_gpu_deployment("one-gpu", gpus=1, replicas=2), namespace)

    def running_pods() -> list[dict]:
        pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app=one-gpu")["items"]
        ok = [p for p in pods if p["status"].get("phase") == "Running" and p["spec"].get("nodeName")]
        return ok if len(ok) == 2 else []

    pods = wait_for(running_pods, 60, message="2 GPU pods Running")
    gpu_nodes = {n["metadata"]["name"]
                 for n in cluster.kubectl_json("get", "nodes", "-l", "nvidia.com/gpu.present=true")["items"]}
    assert {p["spec"]["nodeName"] for p in pods} <= gpu_nodes
    cluster.kubectl("rollout", "status", "deployment/one-gpu", "-n", namespace, "--timeout=60s")


def test_too_many_gpus_stays_pending_with_scheduler_reason(cluster: ClusterHandle, namespace: str) -> None:
    cluster.apply(_gpu_deployment("nine-gpus", gpus=9), namespace)

    def unschedulable_message() -> str:
        for pod in cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app=nine-gpus")["items"]:
            for cond in pod["status"].get("conditions", []):
                if cond["type"] == "PodScheduled" and cond["status"] == "False":
                    return cond.get("message", "")
        return ""

    message = wait_for(unschedulable_message, 60, message="PodScheduled=False")
    assert "Insufficient nvidia.com/gpu" in message
    pod = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "app=nine-gpus")["items"][0]
    assert pod["status"]["phase"] == "Pending"


def test_crd_applied_server_side_is_served(cluster: ClusterHandle, namespace: str) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.harness.modeldeploy.io"},
        "spec": {
            "group": "harness.modeldeploy.io", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object", "properties": {"spec": {"type": "object", "properties": {
                    "size": {"type": "integer", "minimum": 1}}}}}}}],
        },
    }
    cluster.apply(crd)
    cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.harness.modeldeploy.io", "--timeout=30s")
    widget = {"apiVersion": "harness.modeldeploy.io/v1", "kind": "Widget", "metadata": {"name": "w"},
              "spec": {"size": 3}}
    cluster.apply(widget, namespace)
    got = cluster.kubectl_json("get", "widget", "w", "-n", namespace)
    assert got["spec"]["size"] == 3
    bad = dict(widget, spec={"size": 0})
    refused = cluster.apply(bad, namespace, check=False)
    assert refused.returncode != 0 and "spec.size" in refused.stderr


def test_restricted_namespace_rejects_privileged_pod(cluster: ClusterHandle, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged"},
           "spec": {"containers": [{"name": "c", "image": "example.invalid/x:1",
                                    "securityContext": {"privileged": True}}]}}
    refused = cluster.apply(pod, namespace, check=False)
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr and "privileged" in refused.stderr
    compliant = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "compliant"},
                 "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                              "seccompProfile": {"type": "RuntimeDefault"}},
                          "containers": [{"name": "c", "image": "example.invalid/x:1", "securityContext": {
                              "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}}
    cluster.apply(compliant, namespace)


@pytest.mark.skipif(bool(os.environ.get("MD_TEST_KUBECONFIG")), reason="needs the local cluster tool")
def test_up_is_idempotent_and_down_leaves_nothing(cluster: ClusterHandle) -> None:
    cfg = ClusterConfig(name="pytest-lifecycle", fake_nodes=1)
    lc.up(cfg)
    try:
        run = cfg.root / "run"
        pids = {c: process.read_pid(run, c) for c in controlplane.COMPONENTS}
        assert all(process.alive(p) for p in pids.values())
        lc.up(cfg)  # second `up`: nothing restarted
        assert {c: process.read_pid(run, c) for c in controlplane.COMPONENTS} == pids
        nodes = lc.kubectl(cfg, "get", "nodes", "-o", "name").stdout.split()
        assert nodes == ["node/kwok-gpu-0"]
        ports = controlplane.load_ports(cfg)
        assert ports is not None
    finally:
        lc.down(cfg)
    assert not any(process.alive(p) for p in pids.values())
    assert not any(process.port_open(p) for p in vars(ports).values())
    assert not Path(cfg.root).exists()
    with open("/proc/mounts") as mounts:
        assert str(cfg.root) not in mounts.read()
