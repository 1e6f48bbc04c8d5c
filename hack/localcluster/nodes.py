"""Fake GPU nodes for kwok (pure manifest builders)."""

from __future__ import annotations

from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"


def gpu_labels(gpus: int, product: str) -> dict[str, str]:
    """The labels GPU Feature Discovery would set; kwok nodes and the real node both get them."""
    return {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/gpu.memory": "81559",
    }


def fake_gpu_node(name: str, gpus: int, product: str, cpu: str = "32", memory: str = "256Gi",
                  zone: str = "zone-a", max_pods: int = 110) -> dict[str, Any]:
    """A Node that kwok keeps Ready, with `gpus` nvidia.com/gpu and the labels GPU Feature Discovery sets."""
    capacity = {"cpu": cpu, "memory": memory, "pods": str(max_pods), "ephemeral-storage": "500Gi",
                GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "topology.kubernetes.io/zone": zone,
                **gpu_labels(gpus, product),
            },
        },
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake",
                         "containerRuntimeVersion": "kwok"},
        },
    }


def fake_gpu_nodes(count: int, gpus: int, product: str, max_pods: int = 110) -> list[dict[str, Any]]:
    zones = ("zone-a", "zone-b", "zone-c")
    return [fake_gpu_node(f"kwok-gpu-{i}", gpus, product, zone=zones[i % len(zones)], max_pods=max_pods)
            for i in range(count)]
