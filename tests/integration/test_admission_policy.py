"""The chart's admission policy on a real kube-apiserver: what a ModelDeployment may make the operator run.

A ModelDeployment must not be a way around RBAC (docs/security.md): the chart's
ValidatingAdmissionPolicy refuses images outside the allowed patterns, python models unless
enabled, unpinned http:// (and python) sources, and node selectors, tolerations and priority
classes outside the configured lists, each refusal naming the field. Every case is a real
`kubectl apply --dry-run=server`.

One release (the session's `modeldeploy`, installed by real helm) is switched by `helm upgrade`
between four sets of values: the chart defaults, the e2e stack's values (tests/support/stack.py),
a platform configuration with every list set, and the policy disabled. The values the release had
before are restored afterwards, for the tests that share it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.invalid_specs import BASE_SPEC, VALID_PATCHES, apply_patch
from tests.support import operator as op
from tests.support import specs
from tests.support.cluster import ClusterHandle, wait_for
from tests.support.stack import CHART_VALUES as STACK_VALUES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NS = "admission-policy-tests"
EXEMPT_NS = "admission-policy-exempt"
POLICY = f"{op.RELEASE}-admission"  # the policy and its binding
DENIED = f"ValidatingAdmissionPolicy '{POLICY}' with binding '{POLICY}' denied request"
SHA = "0123456789abcdef" * 4
CHART_IMAGES = ("localhost/modeldeploy-triton-cpu:*, localhost/modeldeploy-triton-cpu@*, "
                "localhost/modeldeploy-operator:*, localhost/modeldeploy-operator@*, "
                "localhost/modeldeploy-converter:*, localhost/modeldeploy-converter@*")

# A platform team's configuration: every list set (and a namespace it exempts).
CONFIGURED = (
    "admissionPolicy.allowedImages={nvcr.io/nvidia/tritonserver:*,registry.example.com/ml/loader:1.2}",
    "admissionPolicy.allowPythonModels=true",
    "admissionPolicy.requireSha256ForSchemes={http,https}",
    "admissionPolicy.allowedNodeSelectors={nvidia.com/gpu.product=NVIDIA-H100*,pool=gpu}",
    "admissionPolicy.allowedTolerations={nvidia.com/gpu=*,dedicated=ml}",
    "admissionPolicy.allowedPriorityClassNames={ml-*}",
    "admissionPolicy.namespaceSelector.matchExpressions[0].key=modeldeploy.io/admission-policy",
    "admissionPolicy.namespaceSelector.matchExpressions[0].operator=NotIn",
    "admissionPolicy.namespaceSelector.matchExpressions[0].values[0]=exempt",
)


def _model(**kw: Any) -> dict[str, Any]:
    return {"model": kw}


def _serving(**kw: Any) -> dict[str, Any]:
    return {"serving": kw}


def _python(sha256: str | None = SHA) -> dict[str, Any]:
    """A python model as the e2e tests' bad models are: a tarball on S3."""
    return _model(format="python", source={"uri": "s3://models/digits/bad/model.tar.gz", "sha256": sha256})


MINIMAL: dict[str, Any] = {"model": {"source": {"uri": "s3://models/digits/1/model.onnx"}}}

# (case, patch of MINIMAL, text the refusal must contain: the field first, then the rule)
DEFAULT_REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("serving-image-foreign", _serving(image="localhost/evil:1"),
     f"spec.serving.image: localhost/evil:1 is not an allowed image (allowed: {CHART_IMAGES})"),
    ("serving-image-lookalike-repository", _serving(image="localhost/modeldeploy-triton-cpu-evil:dev"),
     "spec.serving.image: localhost/modeldeploy-triton-cpu-evil:dev is not an allowed image"),
    ("serving-image-other-registry", _serving(image="docker.io/localhost/modeldeploy-triton-cpu:dev"),
     "spec.serving.image: docker.io/localhost/modeldeploy-triton-cpu:dev is not an allowed image"),
    ("loader-image-foreign", _serving(loaderImage="docker.io/library/python:3.12"),
     "spec.serving.loaderImage: docker.io/library/python:3.12 is not an allowed image"),
    ("python-not-enabled", _python(),
     "spec.model.format: python is not allowed: a python model runs whatever code its source holds"),
    ("http-without-sha256", _model(source={"uri": "http://models.example.com/digits.onnx"}),
     "spec.model.source.sha256 is required for http:// sources "
     "(spec.model.source.uri: http://models.example.com/digits.onnx)"),
]

DEFAULT_ADMITTED: list[tuple[str, dict[str, Any]]] = [
    ("operator-default-images", {}),
    ("empty-images-mean-default", _serving(image="", loaderImage="")),
    ("chart-serving-repository-other-tag", _serving(image="localhost/modeldeploy-triton-cpu:late")),
    ("chart-serving-repository-digest", _serving(image=f"localhost/modeldeploy-triton-cpu@sha256:{SHA}")),
    ("chart-converter-as-loader", _serving(loaderImage="localhost/modeldeploy-converter:dev")),
    ("http-with-sha256", _model(source={"uri": "http://models.example.com/digits.onnx", "sha256": SHA})),
    ("https-without-sha256", _model(source={"uri": "https://models.example.com/digits.onnx"})),
    ("s3-without-sha256", {}),
    ("torchscript", _model(format="torchscript")),
    ("placement-unlimited-by-default", _serving(nodeSelector={"zone": "a"}, tolerations=[{"operator": "Exists"}],
                                                priorityClassName="anything")),
]

# The e2e stack's values: what tests/e2e deploys is admitted, the rest of the defaults hold.
STACK_ADMITTED: list[tuple[str, dict[str, Any]]] = [
    ("bad-python-model-without-sha256", _python(sha256=None)),  # tests/e2e/test_canary.py, _rollout_availability.py
    ("late-imported-image", _serving(image="localhost/modeldeploy-triton-cpu:late")),  # test_rollout_availability.py
]
STACK_REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("serving-image-foreign", _serving(image="localhost/evil:1"), "spec.serving.image: localhost/evil:1"),
    ("http-without-sha256", _model(source={"uri": "http://models.example.com/digits.onnx"}),
     "spec.model.source.sha256 is required for http:// sources"),
]

CONFIGURED_REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("serving-image-not-listed", _serving(image="nvcr.io/nvidia/other:1"),
     "spec.serving.image: nvcr.io/nvidia/other:1 is not an allowed image (allowed: "
     f"{CHART_IMAGES}, nvcr.io/nvidia/tritonserver:*, registry.example.com/ml/loader:1.2)"),
    ("loader-image-exact-only", _serving(loaderImage="registry.example.com/ml/loader:1.3"),
     "spec.serving.loaderImage: registry.example.com/ml/loader:1.3 is not an allowed image"),
    ("python-without-sha256", _python(sha256=None), "spec.model.source.sha256 is required for format python"),
    ("https-without-sha256", _model(source={"uri": "https://models.example.com/digits.onnx"}),
     "spec.model.source.sha256 is required for https:// sources"),
    ("node-selector-key", _serving(nodeSelector={"pool": "gpu", "zone": "a"}),
     "spec.serving.nodeSelector: zone=a not allowed (allowed: nvidia.com/gpu.product=NVIDIA-H100*, pool=gpu)"),
    ("node-selector-value", _serving(nodeSelector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}),
     "spec.serving.nodeSelector: nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB not allowed"),
    ("toleration-of-every-taint", _serving(tolerations=[{"operator": "Exists"}]),
     "spec.serving.tolerations: * not allowed (allowed: nvidia.com/gpu=*, dedicated=ml)"),
    ("toleration-exists-for-any-value", _serving(tolerations=[{"key": "dedicated", "operator": "Exists"}]),
     "spec.serving.tolerations: dedicated=* not allowed"),
    ("toleration-other-value", _serving(tolerations=[{"key": "dedicated", "value": "web", "effect": "NoSchedule"}]),
     "spec.serving.tolerations: dedicated=web not allowed"),
    ("priority-class", _serving(priorityClassName="system-node-critical"),
     "spec.serving.priorityClassName: system-node-critical is not allowed (allowed: ml-*)"),
]
CONFIGURED_ADMITTED: list[tuple[str, dict[str, Any]]] = [
    ("serving-image-pattern", _serving(image="nvcr.io/nvidia/tritonserver:25.01-py3")),
    ("loader-image-exact", _serving(loaderImage="registry.example.com/ml/loader:1.2")),
    ("chart-repository-still-allowed", _serving(image="localhost/modeldeploy-triton-cpu:dev")),
    ("python-with-sha256", _python()),
    ("https-with-sha256", _model(source={"uri": "https://models.example.com/digits.onnx", "sha256": SHA})),
    ("node-selectors", _serving(nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "gpu"})),
    ("tolerations", _serving(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                          {"key": "nvidia.com/gpu", "value": "present"},
                                          {"key": "dedicated", "operator": "Equal", "value": "ml"}])),
    ("priority-class", _serving(priorityClassName="ml-high")),
    ("cluster-default-priority", _serving(priorityClassName="")),
]


def _obj(patch: dict[str, Any], name: str = "policy-case") -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": apply_patch(MINIMAL, patch)}


def _dry_run(tc: ClusterHandle, obj: dict[str, Any], ns: str = NS) -> tuple[int, str]:
    proc = tc.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", input_text=json.dumps(obj), check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _refused(tc: ClusterHandle, obj: dict[str, Any], expected: str, ns: str = NS) -> None:
    rc, out = _dry_run(tc, obj, ns)
    assert rc != 0 and DENIED in out and expected in out, out


def _admitted(tc: ClusterHandle, obj: dict[str, Any], ns: str = NS) -> None:
    rc, out = _dry_run(tc, obj, ns)
    assert rc == 0, out


def _outcome_is(tc: ClusterHandle, patch: dict[str, Any], refusal: str | None) -> bool:
    """Whether the apiserver already enforces the values just installed (its policy informers lag)."""
    rc, out = _dry_run(tc, _obj(patch))
    return rc == 0 if refusal is None else (rc != 0 and refusal in out)


# Each scenario: its chart values and probes (patch, refusal or None) that only its values answer so.
SCENARIOS: dict[str, tuple[tuple[str, ...], list[tuple[dict[str, Any], str | None]]]] = {
    "defaults": ((), [(_python(), "spec.model.format: python"),
                      (_serving(image="localhost/evil:1"), "spec.serving.image: localhost/evil:1")]),
    "stack": (STACK_VALUES, [(_python(sha256=None), None),
                             (_serving(image="localhost/evil:1"), "spec.serving.image: localhost/evil:1")]),
    "configured": (CONFIGURED, [(_serving(nodeSelector={"zone": "a"}), "spec.serving.nodeSelector: zone=a")]),
    "disabled": (("admissionPolicy.enabled=false",), [(_serving(image="localhost/evil:1"), None)]),
}


@dataclass
class Release:
    """The session's chart release, switched between SCENARIOS by real `helm upgrade`."""

    tc: ClusterHandle
    current: str | None = None

    def use(self, scenario: str) -> None:
        if self.current == scenario:
            return
        values, probes = SCENARIOS[scenario]
        self.upgrade(*[a for v in values for a in ("--set", v)])
        for patch, refusal in probes:
            wait_for(lambda p=patch, r=refusal: _outcome_is(self.tc, p, r), 60, interval=0.5,
                     message=f"the apiserver enforcing the {scenario} values")
        self.current = scenario

    def upgrade(self, *args: str) -> None:
        # --reset-values: without any --set, helm upgrade would otherwise keep the last values
        op.helm(self.tc, "upgrade", "--install", op.RELEASE, str(op.CHART), "--namespace", op.SYSTEM_NAMESPACE,
                "--reset-values", "--wait=false", *args)


@pytest.fixture(scope="module")
def release(chart_installed: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """The shared release, with the values it had put back afterwards (other tests use it)."""
    tc = chart_installed
    before = json.loads(op.helm(tc, "get", "values", op.RELEASE, "-n", op.SYSTEM_NAMESPACE, "-o", "json").stdout)
    saved = tmp_path_factory.mktemp("release") / "values.yaml"
    saved.write_text(yaml.safe_dump(before or {}))
    for ns in (NS, EXEMPT_NS):
        tc.kubectl("create", "namespace", ns, check=False)
    tc.kubectl("label", "namespace", EXEMPT_NS, "modeldeploy.io/admission-policy=exempt", "--overwrite")
    rel = Release(tc)
    yield rel
    rel.upgrade("-f", str(saved))
    if not before:
        wait_for(lambda: all(_outcome_is(tc, p, r) for p, r in SCENARIOS["defaults"][1]), 60,
                 message="the chart defaults enforced again")
    for ns in (NS, EXEMPT_NS):
        tc.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# --- the chart defaults ---------------------------------------------------------------------------

def test_policy_is_installed_by_default_fail_closed_and_type_checks(release: Release) -> None:
    release.use("defaults")
    tc = release.tc
    policy = tc.kubectl_json("get", "validatingadmissionpolicy", POLICY)
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert "paramKind" not in spec  # the values are compiled in: see test_enabling_again_enforces_the_values
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["modeldeploy.io"] and rule["resources"] == ["modeldeployments"]
    assert sorted(rule["operations"]) == ["CREATE", "UPDATE"]
    binding = tc.kubectl_json("get", "validatingadmissionpolicybinding", POLICY)["spec"]
    assert binding["policyName"] == POLICY and binding["validationActions"] == ["Deny"]
    assert "matchResources" not in binding  # every namespace

    def checked() -> dict[str, Any] | None:
        p = tc.kubectl_json("get", "validatingadmissionpolicy", POLICY)
        return p.get("status") if p.get("status", {}).get("observedGeneration") == p["metadata"]["generation"] else None

    status = wait_for(checked, 30, message="the apiserver type-checked the policy")
    # Type-checked against the CRD's schema: a misspelt field would be a warning here.
    assert not status.get("typeChecking", {}).get("expressionWarnings"), status


@pytest.mark.parametrize(("case", "patch", "expected"), DEFAULT_REFUSED, ids=[c[0] for c in DEFAULT_REFUSED])
def test_chart_defaults_refuse_naming_the_field(release: Release, case: str, patch: dict[str, Any],
                                                expected: str) -> None:
    release.use("defaults")
    _refused(release.tc, _obj(patch), expected)


@pytest.mark.parametrize(("case", "patch"), DEFAULT_ADMITTED, ids=[c[0] for c in DEFAULT_ADMITTED])
def test_chart_defaults_admit(release: Release, case: str, patch: dict[str, Any]) -> None:
    release.use("defaults")
    _admitted(release.tc, _obj(patch))


def test_examples_and_test_specs_are_admitted_with_chart_defaults(release: Release) -> None:
    """What the docs tell users to apply, and what the integration tier creates, still goes in."""
    release.use("defaults")
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ModelDeployment":
                _admitted(release.tc, doc)
    for case, patch in VALID_PATCHES:
        obj = {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "digits"},
               "spec": apply_patch(BASE_SPEC, patch)}
        rc, out = _dry_run(release.tc, obj)
        assert rc == 0, (case, out)
    _admitted(release.tc, specs.model_deployment("plain"))
    _admitted(release.tc, specs.autoscaled_digits("autoscaled"))


def test_update_is_checked_too(release: Release) -> None:
    """An admitted object cannot be changed into a refused one."""
    release.use("defaults")
    tc = release.tc
    obj = _obj({}, "update-me")
    tc.kubectl("apply", "-n", NS, "-f", "-", input_text=json.dumps(obj))
    try:
        _refused(tc, _obj(_serving(loaderImage="localhost/evil:1"), "update-me"),
                 "spec.serving.loaderImage: localhost/evil:1 is not an allowed image")
        _refused(tc, _obj(_model(source={"uri": "http://models.example.com/x.onnx"}), "update-me"),
                 "spec.model.source.sha256 is required for http:// sources")
        _admitted(tc, _obj(_serving(image="localhost/modeldeploy-triton-cpu:v2"), "update-me"))
    finally:
        tc.kubectl("delete", "modeldeployment", "update-me", "-n", NS, "--wait=false", check=False)


# --- the e2e stack's values -----------------------------------------------------------------------

@pytest.mark.parametrize(("case", "patch"), STACK_ADMITTED, ids=[c[0] for c in STACK_ADMITTED])
def test_e2e_stack_values_admit_what_the_e2e_tests_deploy(release: Release, case: str,
                                                          patch: dict[str, Any]) -> None:
    release.use("stack")
    _admitted(release.tc, _obj(patch))


@pytest.mark.parametrize(("case", "patch", "expected"), STACK_REFUSED, ids=[c[0] for c in STACK_REFUSED])
def test_e2e_stack_values_keep_the_other_defaults(release: Release, case: str, patch: dict[str, Any],
                                                  expected: str) -> None:
    release.use("stack")
    _refused(release.tc, _obj(patch), expected)


# --- a platform configuration with every list set -------------------------------------------------

@pytest.mark.parametrize(("case", "patch", "expected"), CONFIGURED_REFUSED, ids=[c[0] for c in CONFIGURED_REFUSED])
def test_configured_lists_refuse_naming_the_field(release: Release, case: str, patch: dict[str, Any],
                                                  expected: str) -> None:
    release.use("configured")
    _refused(release.tc, _obj(patch), expected)


@pytest.mark.parametrize(("case", "patch"), CONFIGURED_ADMITTED, ids=[c[0] for c in CONFIGURED_ADMITTED])
def test_configured_lists_admit(release: Release, case: str, patch: dict[str, Any]) -> None:
    release.use("configured")
    _admitted(release.tc, _obj(patch))


def test_namespace_selector_exempts_labelled_namespaces(release: Release) -> None:
    release.use("configured")
    foreign = _obj(_serving(image="localhost/evil:1"))
    _admitted(release.tc, foreign, ns=EXEMPT_NS)
    _refused(release.tc, foreign, "spec.serving.image: localhost/evil:1", ns=NS)


def test_object_admitted_under_older_values_keeps_metadata_updates(release: Release) -> None:
    """Tightened values: annotations (the operator's one-shot ones, pause) and scale still work on an
    object admitted before; any spec change must meet the new values."""
    tc = release.tc
    release.use("configured")
    tc.kubectl("apply", "-n", NS, "-f", "-", input_text=json.dumps(_obj(_python(), "older")))
    try:
        release.use("defaults")
        tc.kubectl("annotate", "modeldeployment", "older", "-n", NS, "modeldeploy.io/pause=true")
        tc.kubectl("scale", "modeldeployment", "older", "-n", NS, "--replicas=2")
        proc = tc.kubectl("patch", "modeldeployment", "older", "-n", NS, "--type=merge",
                          "-p", json.dumps({"spec": {"model": {"version": "2"}}}), check=False)
        assert proc.returncode != 0 and DENIED in proc.stderr and "spec.model.format: python" in proc.stderr, (
            proc.stderr)
    finally:
        tc.kubectl("delete", "modeldeployment", "older", "-n", NS, "--wait=false", check=False)


# --- the policy disabled --------------------------------------------------------------------------

def test_disabled_policy_installs_nothing_and_refuses_nothing(release: Release) -> None:
    release.use("disabled")
    tc = release.tc
    for kind in ("validatingadmissionpolicy", "validatingadmissionpolicybinding"):
        assert tc.kubectl("get", kind, POLICY, check=False).returncode != 0, kind
    for case, patch, _ in [*DEFAULT_REFUSED, *CONFIGURED_REFUSED]:
        rc, out = _dry_run(tc, _obj(patch))
        assert rc == 0, (case, out)


def test_enabling_again_enforces_the_values(release: Release) -> None:
    """Off, then on again, in one apiserver process: enforced at once. With the values in a paramKind
    ConfigMap this failed: Kubernetes 1.35 stops a built-in paramKind's informer for good once no
    binding uses it (kubernetes#133827), and every ModelDeployment was then refused with "no params
    found" until the apiserver restarted. Hence the values are compiled into the policy."""
    release.use("disabled")
    release.use("defaults")  # waits (60 s at most) for the python and image refusals
    for _case, patch, expected in DEFAULT_REFUSED:
        _refused(release.tc, _obj(patch), expected)
    _admitted(release.tc, _obj({}))
