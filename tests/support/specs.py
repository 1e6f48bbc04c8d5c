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
