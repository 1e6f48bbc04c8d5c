"""ModelDeployment manifests for tests."""

from __future__ import annotations

import copy
from typing import Any


def model_deployment(name: str, *, version: str = "1", replicas: int = 1, gpus: int = 1,
                     max_surge_gpus: int = 0, uri: str | None = None, **spec_extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": name, "version": version,
                  "source": {"uri": uri or f"s3://models/{name}/{version}/model.onnx"},
                  "format": "onnx", "maxBatchSize": 8},
        "serving": {"gpus": gpus},
        "replicas": replicas,
        "rollout": {"strategy": "Canary", "maxSurgeGpus": max_surge_gpus},
    }
    for key, value in spec_extra.items():
        spec[key] = copy.deepcopy(value)
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name}, "spec": spec}


def autoscaled_digits(name: str) -> dict[str, Any]:
    """The digits model on one real pod, scaling on inferenceRate (15 req/s per pod) within seconds:
    what the autoscaling e2e test and benchmarks/autoscale.py both deploy."""
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": {"name": "digits", "version": "1",
                               "source": {"uri": "s3://models/digits/1/model.onnx", "credentialsSecret": "s3-creds"},
                               "format": "onnx", "maxBatchSize": 32},
                     "serving": {"gpus": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                          "limits": {"memory": "2Gi"}}},
                     "replicas": 1,
                     "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3, "metric": "inferenceRate",
                                     "target": 15, "scaleDownDelay": "10s", "stableWindow": "20s",
                                     "panicWindow": "4s"},
                     "rollout": {"maxSurgeGpus": 1}}}
