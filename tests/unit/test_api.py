"""parse_spec, parse_duration and revision_hash: defaults, refusals, normalisation, stability."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from modeldeploy import api
from tests.integration.invalid_specs import (
    BASE_NAME,
    BASE_SPEC,
    INVALID_NAMES,
    INVALID_SPECS,
    VALID_PATCHES,
    apply_patch,
)

MINIMAL = {"model": {"source": {"uri": "s3://models/digits/1/model.onnx"}}}

# The same spec as MINIMAL with every default written out (as the apiserver stores it).
EXPLICIT_DEFAULTS: dict[str, Any] = {
    "model": {
        "name": "digits",
        "version": "1",
        "source": {"uri": "s3://models/digits/1/model.onnx"},
        "format": "onnx",
        "maxBatchSize": 8,
        "optimization": {"quantize": "none", "warmup": True, "minAgreement": 0.99},
    },
    "serving": {"gpus": 1, "gpuResourceName": "nvidia.com/gpu", "instancesPerGpu": 1, "startupTimeoutSeconds": 600},
    "replicas": 1,
    "autoscaling": {
        "enabled": False,
        "minReplicas": 1,
        "maxReplicas": 4,
        "metric": "queueTime",
        "scaleDownDelay": "300s",
        "stableWindow": "60s",
        "panicWindow": "6s",
    },
    "rollout": {
        "strategy": "Canary",
        "progressDeadline": "10m",
        "steps": [{"weight": 10, "pause": "60s"}, {"weight": 50, "pause": "120s"}],
        "analysis": {"interval": "15s", "minRequests": 50, "maxErrorRate": 0.01, "maxLatencyRatio": 1.25,
                     "failureLimit": 2},
    },
}


def _reversed(value: Any) -> Any:
    """The same data with every mapping's keys in reverse order."""
    if isinstance(value, dict):
        return {k: _reversed(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed(v) for v in value]
    return value


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("15s", 15.0), ("2m", 120.0), ("1m30s", 90.0), ("1h", 3600.0), ("1.5h", 5400.0),
     ("0s", 0.0), ("1h2m3s4ms", 3723.004), ("300s", 300.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert api.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "15", "1 m", "1d", "-1s", "1.s", "s", "15S", "1m 30s", 15, None])
def test_parse_duration_refuses(text: Any) -> None:
    with pytest.raises(ValueError):
        api.parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(0.05, "50ms"), (1.0, "1s"), (90.0, "90s"), (0.5, "500ms")])
def test_format_duration(seconds: float, text: str) -> None:
    assert api.format_duration(seconds) == text


# ---------------------------------------------------------------- defaults


def test_minimal_spec_gets_every_default() -> None:
    spec = api.parse_spec(MINIMAL, name="digits")
    assert spec.model == api.ModelSpec(
        name="digits", version="1", source=api.SourceSpec(uri="s3://models/digits/1/model.onnx"), format="onnx",
        max_batch_size=8, dynamic_batching=None,
        optimization=api.OptimizationSpec(quantize="none", warmup=True, min_agreement=0.99),
    )
    assert spec.serving == api.ServingSpec()
    assert (spec.serving.gpus, spec.serving.gpu_resource_name, spec.serving.instances_per_gpu) == (
        1, "nvidia.com/gpu", 1)
    assert spec.serving.startup_timeout_seconds == 600
    assert spec.replicas == 1
    a = spec.autoscaling
    assert (a.enabled, a.min_replicas, a.max_replicas, a.metric) == (False, 1, 4, "queueTime")
    assert (a.target, a.target_text, a.scale_down_delay, a.stable_window, a.panic_window) == (
        0.05, "50ms", 300.0, 60.0, 6.0)
    r = spec.rollout
    assert (r.strategy, r.max_surge_gpus, r.validation, r.progress_deadline) == ("Canary", None, None, 600)
    assert r.steps == (api.CanaryStep(10, 60.0), api.CanaryStep(50, 120.0))
    assert r.analysis == api.AnalysisSpec(interval=15.0, min_requests=50, max_error_rate=0.01,
                                          max_latency_ratio=1.25, max_p99_latency=None, failure_limit=2)
    assert r.gateway_api == api.GatewayAPISpec(enabled=False, parent_refs=())


def test_defaulted_and_explicit_defaults_parse_equal() -> None:
    assert api.parse_spec(MINIMAL, name="digits") == api.parse_spec(EXPLICIT_DEFAULTS, name="digits")


def test_dataclass_defaults_equal_parsed_defaults() -> None:
    """Building the dataclasses directly (tests, planning) gives what parsing a bare spec gives."""
    parsed = api.parse_spec(MINIMAL, name="digits")
    assert parsed.autoscaling == api.AutoscalingSpec()
    assert parsed.rollout == api.RolloutSpec()
    assert parsed.model.optimization == api.OptimizationSpec()


def test_model_name_defaults_to_metadata_name_and_is_required_without_it() -> None:
    assert api.parse_spec(MINIMAL, name="other").model.name == "other"
    with pytest.raises(api.SpecError) as err:
        api.parse_spec(MINIMAL)
    assert err.value.field == "spec.model.name"


def test_empty_strings_mean_default() -> None:
    spec = api.parse_spec(apply_patch(MINIMAL, {"serving": {"image": "", "loaderImage": "", "priorityClassName": ""}}),
                          name="digits")
    assert (spec.serving.image, spec.serving.loader_image, spec.serving.priority_class_name) == (None, None, None)


def test_base_spec_parses_fully() -> None:
    spec = api.parse_spec(BASE_SPEC, name=BASE_NAME)
    assert spec.model.dynamic_batching == api.DynamicBatchingSpec(200, (8, 16))
    assert spec.model.source.credentials_secret == "s3-creds"
    assert dict(spec.serving.resources.requests) == {"cpu": "2", "memory": "8Gi"}
    assert spec.autoscaling.enabled and spec.autoscaling.max_replicas == 8
    assert spec.replicas == 2


def test_spec_is_frozen() -> None:
    spec = api.parse_spec(MINIMAL, name="digits")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.replicas = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.serving.node_selector["x"] = "y"  # type: ignore[index]


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("metric", "target", "value", "text"),
    [
        ("queueTime", "50ms", 0.05, "50ms"),
        ("queueTime", "1s", 1.0, "1s"),
        ("queueTime", None, 0.05, "50ms"),
        ("pendingRequests", 4, 4.0, "4"),
        ("pendingRequests", "2.5", 2.5, "2.5"),
        ("inferenceRate", "120.5", 120.5, "120.5"),
        ("gpuUtilization", 70, 70.0, "70"),
        ("gpuUtilization", "70%", 70.0, "70%"),
        ("gpuUtilization", "100", 100.0, "100"),
    ],
)
def test_autoscaling_target_normalised(metric: str, target: Any, value: float, text: str) -> None:
    spec = api.parse_spec({**MINIMAL, "autoscaling": {"metric": metric, "target": target}}, name="digits")
    assert spec.autoscaling.target == pytest.approx(value)
    assert spec.autoscaling.target_text == text


@pytest.mark.parametrize(
    ("patch", "attr", "expected"),
    [
        ({"rollout": {"steps": [{"weight": 5}, {"weight": 100, "pause": "1m30s"}]}}, "steps",
         (api.CanaryStep(5, 60.0), api.CanaryStep(100, 90.0))),
        ({"rollout": {"analysis": {"maxP99Latency": "250ms"}}}, "max_p99_latency", 0.25),
        ({"rollout": {"analysis": {"interval": "1m"}}}, "interval", 60.0),
    ],
)
def test_rollout_durations_in_seconds(patch: dict[str, Any], attr: str, expected: Any) -> None:
    rollout = api.parse_spec(apply_patch(MINIMAL, patch), name="digits").rollout
    value = getattr(rollout, attr) if hasattr(rollout, attr) else getattr(rollout.analysis, attr)
    assert value == expected


@pytest.mark.parametrize(
    ("uri", "scheme", "claim", "path"),
    [
        ("pvc://model-store/digits/3/model.onnx", "pvc", "model-store", "digits/3/model.onnx"),
        ("s3://models/digits/1/model.onnx", "s3", None, None),
        ("file:///opt/models/m.onnx", "file", None, None),
        ("https://example.com/m.onnx", "https", None, None),
    ],
)
def test_source_uri_parts(uri: str, scheme: str, claim: str | None, path: str | None) -> None:
    source = api.parse_spec({"model": {"source": {"uri": uri}}}, name="x").model.source
    assert (source.scheme, source.pvc_claim, source.pvc_path) == (scheme, claim, path)


def test_quantities_and_sha256_normalised() -> None:
    spec = api.parse_spec(apply_patch(BASE_SPEC, {
        "serving": {"resources": {"requests": {"cpu": 2}, "limits": {"memory": "8Gi"}}},
        "model": {"source": {"sha256": "AB" * 32}},
    }), name=BASE_NAME)
    assert dict(spec.serving.resources.requests) == {"cpu": "2", "memory": "8Gi"}
    assert spec.model.source.sha256 == "ab" * 32


def test_tolerations_keep_only_set_keys() -> None:
    tol = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
           {"key": "spot", "operator": "Equal", "value": "true", "tolerationSeconds": 30}]
    spec = api.parse_spec(apply_patch(MINIMAL, {"serving": {"tolerations": tol}}), name="digits")
    assert [t.to_manifest() for t in spec.serving.tolerations] == tol


# ---------------------------------------------------------------- refusals (the same table as admission)


def _field_of(expected: str) -> str:
    match = re.match(r"^[A-Za-z0-9_.\[\]]+", expected)
    assert match, expected
    return match.group(0).rstrip(":.")


@pytest.mark.parametrize(("case_id", "patch", "expected"), INVALID_SPECS, ids=[c[0] for c in INVALID_SPECS])
def test_parse_spec_refuses_what_admission_refuses(case_id: str, patch: dict[str, Any], expected: str) -> None:
    with pytest.raises(api.SpecError) as err:
        api.parse_spec(apply_patch(BASE_SPEC, patch), name=BASE_NAME)
    field = _field_of(expected)
    assert field in str(err.value), f"{case_id}: {err.value} does not name {field}"
    assert err.value.field.startswith(field.split("[")[0].rsplit(".", 1)[0])


@pytest.mark.parametrize(("case_id", "name", "expected"), INVALID_NAMES, ids=[c[0] for c in INVALID_NAMES])
def test_parse_spec_refuses_bad_names(case_id: str, name: str, expected: str) -> None:
    with pytest.raises(api.SpecError) as err:
        api.parse_spec(BASE_SPEC, name=name)
    assert err.value.field == "metadata.name"


@pytest.mark.parametrize(("case_id", "patch"), VALID_PATCHES, ids=[c[0] for c in VALID_PATCHES])
def test_parse_spec_accepts_what_admission_accepts(case_id: str, patch: dict[str, Any]) -> None:
    api.parse_spec(apply_patch(BASE_SPEC, patch), name=BASE_NAME)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ([], "spec"),
        ({"model": "digits"}, "spec.model"),
        ({"model": {"source": {"uri": "s3://a/b"}, "maxBatchSize": True}}, "spec.model.maxBatchSize"),
        ({"model": {"source": {"uri": "s3://a/b"}, "maxBatchSize": "8"}}, "spec.model.maxBatchSize"),
        ({**MINIMAL, "replicas": 1.5}, "spec.replicas"),
        ({**MINIMAL, "autoscaling": {"enabled": "yes"}}, "spec.autoscaling.enabled"),
        ({**MINIMAL, "rollout": {"analysis": {"maxErrorRate": float("nan")}}}, "spec.rollout.analysis.maxErrorRate"),
        ({**MINIMAL, "serving": {"nodeSelector": {"gpu": 1}}}, "spec.serving.nodeSelector"),
        ({**MINIMAL, "rollout": {"steps": [{"pause": "1m"}]}}, "spec.rollout.steps[0].weight"),
    ],
)
def test_parse_spec_refuses_wrong_types(spec: Any, field: str) -> None:
    """What a schema would catch, caught again for objects that never went through admission."""
    with pytest.raises(api.SpecError) as err:
        api.parse_spec(spec, name="digits")
    assert err.value.field == field


# ---------------------------------------------------------------- revision hash


def test_revision_hash_shape_and_determinism() -> None:
    rev = api.revision_hash(api.parse_spec(BASE_SPEC, name=BASE_NAME))
    assert re.fullmatch(r"[0-9a-f]{10}", rev)
    assert rev == api.revision_hash(BASE_SPEC, name=BASE_NAME)


def test_revision_hash_ignores_key_order_and_written_defaults() -> None:
    base = api.revision_hash(MINIMAL, name="digits")
    assert api.revision_hash(_reversed(MINIMAL), name="digits") == base
    assert api.revision_hash(EXPLICIT_DEFAULTS, name="digits") == base
    assert api.revision_hash(_reversed(EXPLICIT_DEFAULTS), name="digits") == base


def test_revision_hash_of_specs_written_before_new_fields_is_stable() -> None:
    """Fields added later (inputs, validationDataUri) are hashed only when set: an operator upgrade
    must not roll out every existing model. These values were computed before those fields existed."""
    assert api.revision_hash(BASE_SPEC, name=BASE_NAME) == "88f864fb03"
    assert api.revision_hash(MINIMAL, name="digits") == "e876485f92"


@pytest.mark.parametrize(
    "patch",
    [
        {"replicas": 7},
        {"autoscaling": {"enabled": False, "maxReplicas": 20, "metric": "pendingRequests", "target": 3}},
        {"rollout": {"strategy": "Recreate", "steps": [{"weight": 100}], "maxSurgeGpus": 2}},
        {"rollout": {"validation": {"datasetUri": "s3://m/v.npz", "minAccuracy": 0.9}}},
        {"rollout": {"analysis": {"failureLimit": 5}}},
        {"serving": {"resources": {"requests": {"cpu": 2}}}},  # 2 and "2" are the same quantity text
        {"model": {"source": {"sha256": None}}},
    ],
    ids=["replicas", "autoscaling", "rollout", "validation", "analysis", "int-quantity", "no-op"],
)
def test_revision_hash_unchanged(patch: dict[str, Any]) -> None:
    before = api.revision_hash(BASE_SPEC, name=BASE_NAME)
    assert api.revision_hash(apply_patch(BASE_SPEC, patch), name=BASE_NAME) == before


@pytest.mark.parametrize(
    "patch",
    [
        {"model": {"version": "4"}},
        {"model": {"source": {"uri": "s3://models/digits/4/model.onnx"}}},
        {"model": {"source": {"sha256": "a" * 64}}},
        {"model": {"maxBatchSize": 64}},
        {"model": {"dynamicBatching": {"maxQueueDelayMicroseconds": 500}}},
        {"model": {"optimization": {"quantize": "int8"}}},
        {"model": {"name": "digits2"}},
        {"model": {"validationDataUri": "s3://models/digits/val.npz"}},
        {"model": {"format": "torchscript", "inputs": [{"name": "x", "shape": [1, 8, 8]}]}},
        {"serving": {"gpus": 2}},
        {"serving": {"image": "nvcr.io/nvidia/tritonserver:25.01-py3"}},
        {"serving": {"resources": {"limits": {"memory": "16Gi"}}}},
        {"serving": {"tolerations": [{"key": "gpu", "operator": "Exists"}]}},
        {"serving": {"nodeSelector": {"gpu": "h100"}}},
        {"serving": {"startupTimeoutSeconds": 1200}},
    ],
    ids=lambda p: "-".join(f"{k}" for k in p),
)
def test_revision_hash_changes(patch: dict[str, Any]) -> None:
    before = api.revision_hash(BASE_SPEC, name=BASE_NAME)
    assert api.revision_hash(apply_patch(BASE_SPEC, patch), name=BASE_NAME) != before


def test_revision_hash_covers_resolved_images() -> None:
    spec = api.parse_spec(BASE_SPEC, name=BASE_NAME)
    a = api.revision_hash(spec, images=("triton:1", "loader:1"))
    assert a == api.revision_hash(spec, images=("triton:1", "loader:1"))
    assert a != api.revision_hash(spec, images=("triton:2", "loader:1"))
    assert a != api.revision_hash(spec)


def test_spec_error_names_field() -> None:
    err = api.SpecError("spec.model.format", "must be onnx")
    assert (err.field, err.message) == ("spec.model.format", "must be onnx")
    assert str(err) == "spec.model.format: must be onnx"


def test_torchscript_inputs_and_validation_data_are_part_of_the_revision() -> None:
    """Both change what the loader writes, so changing them must roll out a new revision."""
    ts = apply_patch(BASE_SPEC, {"model": {"format": "torchscript"}})
    base = api.revision_hash(ts, name=BASE_NAME)
    shaped = apply_patch(ts, {"model": {"inputs": [{"name": "x", "shape": [1, 8, 8]}]}})
    reshaped = apply_patch(ts, {"model": {"inputs": [{"name": "x", "shape": [1, 8, 9]}]}})
    data = apply_patch(ts, {"model": {"validationDataUri": "s3://models/digits/val.npz"}})
    hashes = {base, api.revision_hash(shaped, name=BASE_NAME), api.revision_hash(reshaped, name=BASE_NAME),
              api.revision_hash(data, name=BASE_NAME)}
    assert len(hashes) == 4
    written_default = apply_patch(ts, {"model": {"inputs": [{"name": "x", "dtype": "float32", "shape": [1, 8, 8]}]}})
    assert api.revision_hash(written_default, name=BASE_NAME) == api.revision_hash(shaped, name=BASE_NAME)
