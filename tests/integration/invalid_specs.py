"""Specs the apiserver must refuse, each with the text of the error that names the field.

Used by the CRD admission test (a real kube-apiserver) and by tests/unit/test_api.py (parse_spec
must refuse the same specs, so the operator never depends on admission having run).

Each case is (case_id, patch, expected): `patch` is merged into BASE_SPEC with `apply_patch`
(mappings merge recursively, a None value deletes the key, anything else replaces), and
`expected` is a substring of the apiserver's error message.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

BASE_NAME = "digits"

BASE_SPEC: dict[str, Any] = {
    "model": {
        "name": "digits",
        "version": "3",
        "source": {"uri": "s3://models/digits/3/model.onnx", "credentialsSecret": "s3-creds"},
        "format": "onnx",
        "maxBatchSize": 32,
        "dynamicBatching": {"maxQueueDelayMicroseconds": 200, "preferredBatchSizes": [8, 16]},
        "optimization": {"quantize": "none", "warmup": True},
    },
    "serving": {
        "gpus": 1,
        "gpuResourceName": "nvidia.com/gpu",
        "instancesPerGpu": 1,
        "resources": {"requests": {"cpu": "2", "memory": "8Gi"}},
    },
    "replicas": 2,
    "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 8, "metric": "queueTime", "target": "50ms"},
    "rollout": {
        "strategy": "Canary",
        "steps": [{"weight": 10, "pause": "60s"}, {"weight": 50, "pause": "120s"}],
        "analysis": {"interval": "15s", "minRequests": 50, "maxErrorRate": 0.01, "failureLimit": 2},
    },
}


def apply_patch(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `patch` merged in (None deletes a key)."""
    out = copy.deepcopy(dict(base))
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = apply_patch(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _model(**kw: Any) -> dict[str, Any]:
    return {"model": kw}


def _serving(**kw: Any) -> dict[str, Any]:
    return {"serving": kw}


def _scaling(**kw: Any) -> dict[str, Any]:
    return {"autoscaling": kw}


def _rollout(**kw: Any) -> dict[str, Any]:
    return {"rollout": kw}


INVALID_SPECS: list[tuple[str, dict[str, Any], str]] = [
    # ---- model
    ("model-missing", {"model": None}, "spec.model: Required value"),
    ("model-name-not-dns", _model(name="Digits_Model"), "spec.model.name"),
    ("model-version-space", _model(version="v 1"), "spec.model.version"),
    ("format-unknown", _model(format="tensorflow"), "spec.model.format"),
    ("max-batch-negative", _model(maxBatchSize=-1), "spec.model.maxBatchSize"),
    ("max-batch-too-big", _model(maxBatchSize=5000), "spec.model.maxBatchSize"),
    ("batching-without-batch", _model(maxBatchSize=0),
     "spec.model.dynamicBatching must be absent when spec.model.maxBatchSize is 0"),
    ("preferred-over-max", _model(maxBatchSize=8),
     "spec.model.dynamicBatching.preferredBatchSizes must each be <= spec.model.maxBatchSize"),
    ("preferred-duplicate", _model(dynamicBatching={"preferredBatchSizes": [4, 4]}),
     "spec.model.dynamicBatching.preferredBatchSizes"),
    ("queue-delay-negative", _model(dynamicBatching={"maxQueueDelayMicroseconds": -5}),
     "spec.model.dynamicBatching.maxQueueDelayMicroseconds"),
    ("quantize-unknown", _model(optimization={"quantize": "fp8"}), "spec.model.optimization.quantize"),
    ("quantize-int8-python", _model(format="python", optimization={"quantize": "int8"}),
     "spec.model.optimization.quantize int8 is only supported"),
    ("min-agreement-above-1", _model(optimization={"minAgreement": 1.5}), "spec.model.optimization.minAgreement"),
    ("tune-python", _model(format="python", optimization={"tune": {}}),
     "spec.model.optimization.tune applies to formats onnx, torchscript and pytorch-export"),
    ("tune-no-batching", _model(maxBatchSize=0, dynamicBatching=None, optimization={"tune": {}}),
     "spec.model.optimization.tune needs spec.model.maxBatchSize >= 1"),
    ("tune-objective-unknown", _model(optimization={"tune": {"objective": "speed"}}),
     "spec.model.optimization.tune.objective"),
    ("tune-budget-too-short", _model(optimization={"tune": {"budget": "5s"}}),
     "spec.model.optimization.tune.budget must be between 10s and 1h"),
    ("tune-budget-too-long", _model(optimization={"tune": {"budget": "2h"}}),
     "spec.model.optimization.tune.budget must be between 10s and 1h"),
    ("tune-budget-not-a-duration", _model(optimization={"tune": {"budget": "3 minutes"}}),
     "spec.model.optimization.tune.budget"),
    ("tune-max-p99-zero", _model(optimization={"tune": {"maxP99": "0ms"}}),
     "spec.model.optimization.tune.maxP99 must be more than 0"),
    ("tune-when-unknown", _model(optimization={"tune": {"whenBoundNotMet": "Ignore"}}),
     "spec.model.optimization.tune.whenBoundNotMet"),
    ("tune-concurrency-zero", _model(optimization={"tune": {"concurrency": [0, 8]}}),
     "spec.model.optimization.tune.concurrency"),
    ("tune-concurrency-repeated", _model(optimization={"tune": {"concurrency": [8, 8]}}),
     "spec.model.optimization.tune.concurrency"),
    ("inputs-for-onnx", _model(inputs=[{"name": "x", "shape": [1, 8, 8]}]),
     "spec.model.inputs is only for format torchscript"),
    ("inputs-dim-zero", _model(format="torchscript", inputs=[{"name": "x", "shape": [1, 0, 8]}]),
     "spec.model.inputs[0].shape[1]"),
    ("inputs-dtype-unknown", _model(format="torchscript", inputs=[{"name": "x", "dtype": "complex64", "shape": [8]}]),
     "spec.model.inputs[0].dtype"),
    ("inputs-name-repeated", _model(format="torchscript", inputs=[{"name": "x", "shape": [8]},
                                                                  {"name": "x", "shape": [4]}]),
     "spec.model.inputs[1]"),
    ("inputs-name-invalid", _model(format="torchscript", inputs=[{"name": "1x y", "shape": [8]}]),
     "spec.model.inputs[0].name"),
    ("validation-data-ftp", _model(validationDataUri="ftp://data/val.npz"),
     "spec.model.validationDataUri must start with one of"),
    ("validation-data-pvc-no-path", _model(source={"uri": "pvc://model-store/digits.onnx", "credentialsSecret": None},
                                           validationDataUri="pvc://model-store"),
     "spec.model.validationDataUri must be pvc://CLAIM/PATH"),
    ("validation-data-other-claim", _model(source={"uri": "pvc://model-store/digits.onnx", "credentialsSecret": None},
                                           validationDataUri="pvc://other-store/val.npz"),
     "spec.model.validationDataUri: a pvc:// file must be on the claim of spec.model.source.uri"),
    ("validation-data-pvc-without-pvc-source", _model(validationDataUri="pvc://model-store/val.npz"),
     "spec.model.validationDataUri: a pvc:// file must be on the claim of spec.model.source.uri"),
    # ---- model.source
    ("uri-missing", _model(source={"uri": None}), "spec.model.source.uri: Required value"),
    ("uri-scheme-ftp", _model(source={"uri": "ftp://models/digits.onnx"}),
     "spec.model.source.uri must start with one of"),
    ("uri-no-scheme", _model(source={"uri": "models/digits.onnx"}), "spec.model.source.uri must start with one of"),
    ("uri-s3-no-key", _model(source={"uri": "s3://models"}), "spec.model.source.uri must be s3://BUCKET/KEY"),
    ("uri-pvc-no-path", _model(source={"uri": "pvc://model-store"}), "spec.model.source.uri must be pvc://CLAIM/PATH"),
    ("uri-pvc-bad-claim", _model(source={"uri": "pvc://Model_Store/digits.onnx"}),
     "spec.model.source.uri must be pvc://CLAIM/PATH"),
    ("uri-file-relative", _model(source={"uri": "file://models/digits.onnx"}),
     "spec.model.source.uri must be file:///ABSOLUTE/PATH"),
    ("uri-whitespace", _model(source={"uri": "s3://models/my model.onnx"}), "spec.model.source.uri"),
    ("sha256-short", _model(source={"sha256": "abc123"}), "spec.model.source.sha256"),
    ("sha256-not-hex", _model(source={"sha256": "z" * 64}), "spec.model.source.sha256"),
    ("secret-name-invalid", _model(source={"credentialsSecret": "S3_Creds"}), "spec.model.source.credentialsSecret"),
    # ---- serving
    ("gpus-negative", _serving(gpus=-1), "spec.serving.gpus"),
    ("gpus-too-many", _serving(gpus=17), "spec.serving.gpus"),
    ("instances-zero", _serving(instancesPerGpu=0), "spec.serving.instancesPerGpu"),
    ("gpu-resource-name-invalid", _serving(gpuResourceName="gpu"), "spec.serving.gpuResourceName"),
    ("resources-name-gpu", _serving(resources={"limits": {"nvidia.com/gpu": 1}}),
     "spec.serving.resources must not name the GPU resource"),
    ("resources-bad-quantity", _serving(resources={"requests": {"cpu": "two"}}), "spec.serving.resources.requests"),
    ("toleration-operator", _serving(tolerations=[{"key": "gpu", "operator": "In"}]),
     "spec.serving.tolerations[0].operator"),
    ("toleration-effect", _serving(tolerations=[{"key": "gpu", "operator": "Exists", "effect": "Sometimes"}]),
     "spec.serving.tolerations[0].effect"),
    ("priority-class-invalid", _serving(priorityClassName="High_Priority"), "spec.serving.priorityClassName"),
    ("startup-timeout-too-short", _serving(startupTimeoutSeconds=5), "spec.serving.startupTimeoutSeconds"),
    # ---- replicas and autoscaling
    ("replicas-negative", {"replicas": -1}, "spec.replicas"),
    ("min-above-max", _scaling(minReplicas=5, maxReplicas=2),
     "spec.autoscaling.minReplicas must be <= spec.autoscaling.maxReplicas"),
    ("max-replicas-zero", _scaling(maxReplicas=0), "spec.autoscaling.maxReplicas"),
    ("min-replicas-negative", _scaling(minReplicas=-1), "spec.autoscaling.minReplicas"),
    ("zero-without-idle-window", _scaling(minReplicas=0),
     "spec.autoscaling.scaleToZeroAfter is required when spec.autoscaling.minReplicas is 0"),
    ("idle-window-without-zero", _scaling(scaleToZeroAfter="10m"),
     "spec.autoscaling.scaleToZeroAfter needs spec.autoscaling.minReplicas: 0"),
    ("idle-window-too-short", _scaling(minReplicas=0, scaleToZeroAfter="10s"),
     "spec.autoscaling.scaleToZeroAfter must be between 30s and 168h"),
    ("idle-window-not-a-duration", _scaling(minReplicas=0, scaleToZeroAfter="10 minutes"),
     "spec.autoscaling.scaleToZeroAfter"),
    ("metric-unknown", _scaling(metric="cpu"), "spec.autoscaling.metric"),
    ("queue-time-target-number-string", _scaling(target="50"),
     "spec.autoscaling.target must be a duration such as 50ms"),
    ("queue-time-target-int", _scaling(target=50), "spec.autoscaling.target must be a duration such as 50ms"),
    ("pending-target-word", _scaling(metric="pendingRequests", target="fast"),
     "spec.autoscaling.target must be a positive number"),
    ("pending-target-zero", _scaling(metric="pendingRequests", target=0),
     "spec.autoscaling.target must be a positive number"),
    ("rate-target-duration", _scaling(metric="inferenceRate", target="50ms"),
     "spec.autoscaling.target must be a positive number"),
    ("rate-target-missing", _scaling(metric="inferenceRate", target=None),
     "spec.autoscaling.target is required when spec.autoscaling.metric is not queueTime"),
    ("gpu-util-over-100", _scaling(metric="gpuUtilization", target=150),
     "spec.autoscaling.target must be a percentage between 1 and 100"),
    ("gpu-util-zero-percent", _scaling(metric="gpuUtilization", target="0%"),
     "spec.autoscaling.target must be a percentage between 1 and 100"),
    ("scale-down-delay-words", _scaling(scaleDownDelay="5 minutes"), "spec.autoscaling.scaleDownDelay"),
    ("panic-over-stable", _scaling(stableWindow="30s", panicWindow="1m"),
     "spec.autoscaling.panicWindow must be <= spec.autoscaling.stableWindow"),
    # ---- rollout
    ("strategy-unknown", _rollout(strategy="BlueGreen"), "spec.rollout.strategy"),
    ("max-surge-negative", _rollout(maxSurgeGpus=-1), "spec.rollout.maxSurgeGpus"),
    ("steps-decreasing", _rollout(steps=[{"weight": 50}, {"weight": 10}]),
     "spec.rollout.steps weights must be strictly increasing"),
    ("steps-repeated", _rollout(steps=[{"weight": 10}, {"weight": 10}]),
     "spec.rollout.steps weights must be strictly increasing"),
    ("steps-empty", _rollout(steps=[]), "spec.rollout.steps"),
    ("step-weight-zero", _rollout(steps=[{"weight": 0}]), "spec.rollout.steps[0].weight"),
    ("step-weight-over-100", _rollout(steps=[{"weight": 101}]), "spec.rollout.steps[0].weight"),
    ("step-pause-words", _rollout(steps=[{"weight": 10, "pause": "1 minute"}]), "spec.rollout.steps[0].pause"),
    ("analysis-interval-too-short", _rollout(analysis={"interval": "500ms"}),
     "spec.rollout.analysis.interval must be at least 1s"),
    ("analysis-error-rate-above-1", _rollout(analysis={"maxErrorRate": 2}), "spec.rollout.analysis.maxErrorRate"),
    ("analysis-latency-ratio-below-1", _rollout(analysis={"maxLatencyRatio": 0.5}),
     "spec.rollout.analysis.maxLatencyRatio"),
    ("analysis-failure-limit-zero", _rollout(analysis={"failureLimit": 0}), "spec.rollout.analysis.failureLimit"),
    ("analysis-p99-words", _rollout(analysis={"maxP99Latency": "fast"}), "spec.rollout.analysis.maxP99Latency"),
    ("validation-with-recreate",
     _rollout(strategy="Recreate", validation={"datasetUri": "s3://models/digits/val.npz", "minAccuracy": 0.9}),
     "spec.rollout.validation requires spec.rollout.strategy Canary"),
    ("validation-no-dataset", _rollout(validation={"minAccuracy": 0.9}),
     "spec.rollout.validation.datasetUri: Required value"),
    ("validation-no-threshold", _rollout(validation={"datasetUri": "s3://models/digits/val.npz"}),
     "spec.rollout.validation must set minAccuracy or minAgreement"),
    ("validation-accuracy-above-1", _rollout(validation={"datasetUri": "s3://models/val.npz", "minAccuracy": 1.5}),
     "spec.rollout.validation.minAccuracy"),
    ("validation-dataset-scheme", _rollout(validation={"datasetUri": "ftp://x/val.npz", "minAccuracy": 0.9}),
     "spec.rollout.validation.datasetUri must start with one of"),
    ("gateway-without-parents", _rollout(trafficRouting={"gatewayAPI": {"enabled": True}}),
     "spec.rollout.trafficRouting.gatewayAPI.parentRefs must name at least one Gateway"),
]

# metadata.name cases: (case_id, name, expected). The name also names Services, hence stricter rules.
INVALID_NAMES: list[tuple[str, str, str]] = [
    ("name-too-long", "a" * 57, "metadata.name must be at most 56 characters"),
    ("name-starts-with-digit", "1digits", "metadata.name must be a DNS-1035 label"),
]

# Specs that must be accepted (edge cases next to the refused ones).
VALID_PATCHES: list[tuple[str, dict[str, Any]]] = [
    ("base", {}),
    ("cpu-only", _serving(gpus=0)),
    ("mig-profile", _serving(gpuResourceName="nvidia.com/mig-1g.10gb")),
    ("no-batching", _model(maxBatchSize=0, dynamicBatching=None)),
    ("int8-onnx", _model(optimization={"quantize": "int8", "minAgreement": 0.98})),
    ("tune-defaults", _model(optimization={"tune": {}})),
    ("tune-all-set", _model(optimization={"tune": {"objective": "latency", "maxP99": "50ms", "budget": "2m",
                                                   "whenBoundNotMet": "Fail", "concurrency": [1, 16]}})),
    ("tune-with-int8", _model(optimization={"quantize": "int8", "tune": {"budget": "1h"}})),
    ("pvc-source", _model(source={"uri": "pvc://model-store/digits/3/model.onnx", "credentialsSecret": None})),
    ("file-source", _model(source={"uri": "file:///opt/models/digits.onnx", "credentialsSecret": None})),
    ("https-source", _model(source={"uri": "https://example.com/models/digits.onnx"})),
    ("sha256", _model(source={"sha256": "a" * 64})),
    ("torchscript-inputs", _model(format="torchscript", inputs=[
        {"name": "image", "dtype": "float32", "shape": [3, 224, 224]},
        {"name": "mask", "dtype": "bool", "shape": [7]}])),
    ("validation-data-s3", _model(optimization={"quantize": "int8"}, validationDataUri="s3://models/digits/val.npz")),
    ("validation-data-same-claim", _model(source={"uri": "pvc://model-store/digits.onnx", "credentialsSecret": None},
                                          validationDataUri="pvc://model-store/val/digits.npz")),
    ("pending-int-target", _scaling(metric="pendingRequests", target=4)),
    ("rate-string-target", _scaling(metric="inferenceRate", target="120.5")),
    ("gpu-util-percent", _scaling(metric="gpuUtilization", target="70%")),
    ("gpu-util-int", _scaling(metric="gpuUtilization", target=70)),
    ("queue-time-default-target", _scaling(target=None)),
    ("one-step-100", _rollout(steps=[{"weight": 100, "pause": "1m30s"}])),
    ("recreate", _rollout(strategy="Recreate")),
    ("validation", _rollout(validation={"datasetUri": "s3://models/digits/val.npz", "minAccuracy": 0.95})),
    ("validation-file-dataset", _rollout(validation={"datasetUri": "file:///data/val.npz", "minAgreement": 0.99})),
    ("gateway", _rollout(trafficRouting={"gatewayAPI": {"enabled": True, "parentRefs": [{"name": "web"}]}})),
    ("zero-replicas", {"replicas": 0}),
    ("scale-to-zero", _scaling(minReplicas=0, scaleToZeroAfter="10m")),
    ("scale-to-zero-longest", _scaling(minReplicas=0, scaleToZeroAfter="168h")),
    ("tolerations", _serving(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])),
]
