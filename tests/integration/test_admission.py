"""The CRD refuses bad ModelDeployments at admission (real kube-apiserver), naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.invalid_specs import (
    BASE_NAME,
    BASE_SPEC,
    INVALID_NAMES,
    INVALID_SPECS,
    VALID_PATCHES,
    apply_patch,
)
from tests.support.cluster import ClusterHandle

pytestmark = pytest.mark.integration


def _obj(spec: dict[str, Any], name: str = BASE_NAME) -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": spec}


def _create(tc: ClusterHandle, ns: str, obj: dict[str, Any]) -> tuple[int, str]:
    proc = tc.kubectl("create", "--dry-run=server", "-n", ns, "-f", "-", input_text=json.dumps(obj), check=False)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def admission_ns(chart_installed: ClusterHandle) -> str:
    chart_installed.kubectl("create", "namespace", "admission-tests", check=False)
    return "admission-tests"


def test_at_least_thirty_refusal_cases() -> None:
    assert len(INVALID_SPECS) + len(INVALID_NAMES) >= 30


@pytest.mark.parametrize(("case", "patch", "expected"), INVALID_SPECS, ids=[c[0] for c in INVALID_SPECS])
def test_invalid_spec_is_refused_naming_the_field(chart_installed: ClusterHandle, admission_ns: str, case: str,
                                                  patch: dict[str, Any], expected: str) -> None:
    rc, out = _create(chart_installed, admission_ns, _obj(apply_patch(BASE_SPEC, patch)))
    assert rc != 0, f"{case} was accepted"
    assert expected in out, out


@pytest.mark.parametrize(("case", "name", "expected"), INVALID_NAMES, ids=[c[0] for c in INVALID_NAMES])
def test_invalid_name_is_refused(chart_installed: ClusterHandle, admission_ns: str, case: str, name: str,
                                 expected: str) -> None:
    rc, out = _create(chart_installed, admission_ns, _obj(BASE_SPEC, name))
    assert rc != 0 and expected in out, out


@pytest.mark.parametrize(("case", "patch"), VALID_PATCHES, ids=[c[0] for c in VALID_PATCHES])
def test_valid_spec_is_accepted(chart_installed: ClusterHandle, admission_ns: str, case: str,
                                patch: dict[str, Any]) -> None:
    rc, out = _create(chart_installed, admission_ns, _obj(apply_patch(BASE_SPEC, patch)))
    assert rc == 0, out


def test_defaults_are_filled_in(chart_installed: ClusterHandle, admission_ns: str) -> None:
    minimal = _obj({"model": {"source": {"uri": "s3://models/digits/1/model.onnx"}}}, "minimal")
    created = json.loads(chart_installed.kubectl("create", "--dry-run=server", "-o", "json", "-n", admission_ns,
                                                 "-f", "-", input_text=json.dumps(minimal)).stdout)
    spec = created["spec"]
    assert spec["model"]["format"] == "onnx"
    assert spec["serving"]["gpus"] == 1 and spec["serving"]["gpuResourceName"] == "nvidia.com/gpu"
    assert spec["replicas"] == 1
    assert spec["rollout"]["strategy"] == "Canary"
    assert [s["weight"] for s in spec["rollout"]["steps"]] == [10, 50]


def test_kubectl_explain_documents_fields(chart_installed: ClusterHandle) -> None:
    out = chart_installed.kubectl("explain", "modeldeployment.spec.rollout.analysis.maxLatencyRatio").stdout
    assert "DESCRIPTION" in out or "FIELD" in out
    assert "p99" in out.lower()


def test_status_keeps_per_pod_canary_counters(chart_installed: ClusterHandle, admission_ns: str) -> None:
    """A restarted operator reads status.canary.lastSample back: the apiserver must not prune the
    per-pod counters (fields missing from the schema are dropped silently)."""
    obj = _obj({"model": {"source": {"uri": "s3://models/digits/1/model.onnx"}}}, "status-sample")
    chart_installed.kubectl("create", "-n", admission_ns, "-f", "-", input_text=json.dumps(obj))
    sample = {"success": 30.0, "failure": 1.0, "durationUs": 900.0,
              "pods": {"digits-a-1": {"success": 20.0, "failure": 1.0, "durationUs": 600.0},
                       "digits-a-2": {"success": 10.0, "failure": 0.0, "durationUs": 300.0}}}
    patch = {"status": {"canary": {"phase": "Progressing", "revision": "a", "step": 0,
                                   "lastSample": {"canary": sample, "stable": sample}}}}
    stored = json.loads(chart_installed.kubectl(
        "patch", "modeldeployment", "status-sample", "-n", admission_ns, "--subresource=status", "--type=merge",
        "-p", json.dumps(patch), "-o", "json").stdout)
    assert stored["status"]["canary"]["lastSample"] == {"canary": sample, "stable": sample}
    chart_installed.kubectl("delete", "modeldeployment", "status-sample", "-n", admission_ns, "--wait=false")
