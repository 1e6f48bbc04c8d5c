"""The chart's admission policy as rendered by the real helm binary: on by default and fail-closed,
scoped to ModelDeployments, the values compiled into it; enforcement itself is proven on
a real apiserver in tests/integration/test_admission_policy.py."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.support import chart

pytestmark = pytest.mark.skipif(chart.helm() is None, reason="helm is not cached (make binaries)")

POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def _values(*sets: str) -> dict[str, Any]:
    """The policy's compiled-in chart values: its variables whose expressions are JSON literals."""
    (policy,) = chart.by_kind(chart.render(*sets), "ValidatingAdmissionPolicy")
    out = {}
    for v in policy["spec"]["variables"]:
        try:
            out[v["name"]] = json.loads(v["expression"])
        except json.JSONDecodeError:
            continue  # a CEL expression over the object
    return out


def _one(kind: str, *sets: str) -> dict[str, Any]:
    (obj,) = chart.by_kind(chart.render(*sets), kind)
    return obj


def test_on_by_default_fail_closed_and_scoped_to_modeldeployments() -> None:
    policy = _one("ValidatingAdmissionPolicy")
    spec = policy["spec"]
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert spec["failurePolicy"] == "Fail"
    assert "paramKind" not in spec  # values compiled in, see templates/admissionpolicy.yaml (kubernetes#133827)
    assert spec["matchConstraints"]["resourceRules"] == [{
        "apiGroups": ["modeldeploy.io"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
        "resources": ["modeldeployments"]}]
    binding = _one("ValidatingAdmissionPolicyBinding")["spec"]
    assert binding["policyName"] == policy["metadata"]["name"]
    assert binding["validationActions"] == ["Deny"]
    assert "paramRef" not in binding
    assert "matchResources" not in binding  # every namespace


def test_disabled_renders_nothing() -> None:
    assert not [d for d in chart.render("admissionPolicy.enabled=false") if d["kind"] in POLICY_KINDS]


def test_every_refusal_names_its_field() -> None:
    for v in _one("ValidatingAdmissionPolicy")["spec"]["validations"]:
        assert v["message"].startswith("spec.") and v["reason"] == "Forbidden", v
        assert v.get("messageExpression", "'spec.").startswith("'spec."), v


def test_default_values_are_the_chart_images_and_strict_switches() -> None:
    assert _values() == {
        "allowedImages": ["localhost/modeldeploy-triton-cpu:*", "localhost/modeldeploy-triton-cpu@*",
                          # loaderImage "" is the operator's image
                          "localhost/modeldeploy-operator:*", "localhost/modeldeploy-operator@*",
                          "localhost/modeldeploy-converter:*", "localhost/modeldeploy-converter@*"],
        "allowPythonModels": False, "sha256Schemes": ["http"], "requireSha256ForPython": True,
        "allowedNodeSelectors": [], "allowedTolerations": [], "allowedPriorityClassNames": []}


def test_allowed_images_follow_the_image_values() -> None:
    data = _values("servingImage=nvcr.io/nvidia/tritonserver:25.01-py3", "loaderImage=registry:5000/ml/loader",
                   "converterImage=registry:5000/ml/converter@sha256:" + "a" * 64,
                   "admissionPolicy.allowedImages={ghcr.io/acme/*}")
    assert data["allowedImages"] == [
        "nvcr.io/nvidia/tritonserver:*", "nvcr.io/nvidia/tritonserver@*",
        "registry:5000/ml/loader:*", "registry:5000/ml/loader@*",  # a registry port is not a tag
        "registry:5000/ml/converter:*", "registry:5000/ml/converter@*", "ghcr.io/acme/*"]
    data = _values("admissionPolicy.allowChartImageRepositories=false", "admissionPolicy.allowedImages={a/b:1}")
    assert data["allowedImages"] == ["a/b:1"]
    # no allowed image: only the operator's defaults (an empty field) are admitted
    assert _values("admissionPolicy.allowChartImageRepositories=false")["allowedImages"] == []


def test_gpu_serving_image_is_a_chart_image_when_enabled() -> None:
    """With gpuServing on, the operator's default serving image is gpuServing.image."""
    images = _values("gpuServing.enabled=true", "gpuServing.image=nvcr.io/acme/triton-gpu:26.10")["allowedImages"]
    assert "nvcr.io/acme/triton-gpu:*" in images and "nvcr.io/acme/triton-gpu@*" in images
    assert "nvcr.io/acme/triton-gpu:*" not in _values("gpuServing.image=nvcr.io/acme/triton-gpu:26.10")["allowedImages"]


def test_lists_and_switches_reach_the_policy() -> None:
    data = _values("admissionPolicy.allowPythonModels=true", "admissionPolicy.requireSha256ForSchemes={http,https}",
                   "admissionPolicy.allowedNodeSelectors={pool=gpu,zone=*}", "admissionPolicy.allowedTolerations={*}",
                   "admissionPolicy.allowedPriorityClassNames={ml-*}", "admissionPolicy.requireSha256ForPython=false")
    assert data["allowPythonModels"] is True and data["sha256Schemes"] == ["http", "https"]
    assert data["allowedNodeSelectors"] == ["pool=gpu", "zone=*"] and data["allowedTolerations"] == ["*"]
    assert data["allowedPriorityClassNames"] == ["ml-*"] and data["requireSha256ForPython"] is False


def test_namespace_selector_reaches_the_binding() -> None:
    binding = _one("ValidatingAdmissionPolicyBinding", "admissionPolicy.namespaceSelector.matchLabels.team=ml")
    assert binding["spec"]["matchResources"] == {"namespaceSelector": {"matchLabels": {"team": "ml"}}}


@pytest.mark.parametrize("bad", [
    "admissionPolicy.allowedImages={a*b}",  # `*` only at the end: a prefix
    "admissionPolicy.requireSha256ForSchemes={ftp}",
    "admissionPolicy.allowedNodeSelectors={pool}",  # key=value, key=*, or a prefix ending in *
    "admissionPolicy.allowedPriorityClassNames={System}",
    "admissionPolicy.allowPythonModels=yes",
])
def test_values_schema_refuses_bad_policy_values(bad: str) -> None:
    exe = chart.helm()
    assert exe is not None
    proc = subprocess.run([str(exe), "template", "md", str(chart.CHART), "--kube-version", "1.35.4", "--set", bad],
                          text=True, capture_output=True, timeout=120)
    assert proc.returncode != 0 and "admissionPolicy" in proc.stderr, proc.stderr
