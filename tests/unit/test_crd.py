"""The CRD file, checked without a cluster: documented fields, names, and the same defaults as api.py.

(That the apiserver accepts it, CEL cost included, is the integration suite's job.)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy import api
from modeldeploy import constants as c
from tests.integration.invalid_specs import BASE_NAME, BASE_SPEC, VALID_PATCHES, apply_patch

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "modeldeploy.io_modeldeployments.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    return _version(crd)["schema"]["openAPIV3Schema"]


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every property schema under `node`, with its dotted path."""
    out = []
    for name, child in node.get("properties", {}).items():
        out.append((f"{path}.{name}", child))
        out += _walk(child, f"{path}.{name}")
    if "items" in node:
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def _default(node: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the apiserver does it: absent fields get defaults, recursively."""
    if isinstance(value, dict) and "properties" in node:
        out = dict(value)
        for name, child in node["properties"].items():
            if name not in out and "default" in child:
                out[name] = copy.deepcopy(child["default"])
            if name in out:
                out[name] = _default(child, out[name])
        return out
    if isinstance(value, list) and "items" in node:
        return [_default(node["items"], v) for v in value]
    return value


def test_names_match_constants(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == c.CRD_NAME
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == (c.GROUP, "Namespaced")
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (c.KIND, c.PLURAL, c.SINGULAR)
    assert names["shortNames"] == [c.SHORT_NAME]
    assert names["categories"] == ["modeldeploy"]
    version = _version(crd)
    assert (version["name"], version["served"], version["storage"]) == (c.VERSION, True, True)


def test_subresources(crd: dict[str, Any]) -> None:
    sub = _version(crd)["subresources"]
    assert sub["status"] == {}
    assert sub["scale"] == {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector"}


def test_printer_columns(crd: dict[str, Any]) -> None:
    columns = [col["name"] for col in _version(crd)["additionalPrinterColumns"] if not col.get("priority")]
    assert columns == ["Model", "Version", "Ready", "Phase", "Canary", "Age"]


def test_every_field_is_documented(crd: dict[str, Any]) -> None:
    schema = _schema(crd)
    missing = [path for path, node in _walk(schema, "") if path != ".metadata" and not node.get("description")]
    assert not missing, f"fields without a description (kubectl explain): {missing}"


def test_every_string_and_list_is_bounded_where_cel_reads_it(crd: dict[str, Any]) -> None:
    """CEL cost estimation needs maxLength/maxItems on the spec's strings and lists."""
    spec = _schema(crd)["properties"]["spec"]
    unbounded = []
    for path, node in _walk(spec, "spec"):
        if node.get("type") == "string" and "enum" not in node and "maxLength" not in node:
            unbounded.append(path)
        if node.get("type") == "array" and "maxItems" not in node:
            unbounded.append(path)
        if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict) \
                and "maxProperties" not in node:
            unbounded.append(path)
    assert not unbounded


def test_every_rule_has_a_message_naming_a_field(crd: dict[str, Any]) -> None:
    rules = list(_schema(crd).get("x-kubernetes-validations", []))
    for _, node in _walk(_schema(crd), ""):
        rules += node.get("x-kubernetes-validations", [])
    assert len(rules) >= 20
    for rule in rules:
        assert rule["message"].startswith(("spec.", "metadata.")), rule


def test_status_has_what_the_operator_writes(crd: dict[str, Any]) -> None:
    status = _schema(crd)["properties"]["status"]["properties"]
    for key in ("observedGeneration", "phase", "conditions", "replicas", "readyReplicas", "readyText", "selector",
                "stableRevision", "canaryRevision", "failedRevision", "revisions", "canary", "autoscaling",
                "endpoint", "message"):
        assert key in status, key
    assert set(status["phase"]["enum"]) == {v for k, v in vars(c.Phase).items() if k.isupper()}


@pytest.mark.parametrize(
    "spec",
    [{"model": {"source": {"uri": "s3://models/digits/1/model.onnx"}}}, BASE_SPEC,
     *(apply_patch(BASE_SPEC, patch) for _, patch in VALID_PATCHES)],
)
def test_crd_defaults_equal_api_defaults(crd: dict[str, Any], spec: dict[str, Any]) -> None:
    """The operator must not depend on defaulting having run: both paths give the same spec."""
    defaulted = _default(_schema(crd)["properties"]["spec"], spec)
    assert api.parse_spec(defaulted, name=BASE_NAME) == api.parse_spec(spec, name=BASE_NAME)
    assert api.revision_hash(defaulted, name=BASE_NAME) == api.revision_hash(spec, name=BASE_NAME)


def test_minimal_defaults_are_all_written(crd: dict[str, Any]) -> None:
    defaulted = _default(_schema(crd)["properties"]["spec"], {"model": {"source": {"uri": "s3://m/d.onnx"}}})
    assert defaulted["serving"]["gpus"] == api.DEFAULT_GPUS
    assert defaulted["rollout"]["steps"] == [{"weight": w, "pause": p} for w, p in api.DEFAULT_STEPS]
    assert defaulted["rollout"]["analysis"]["interval"] == api.DEFAULT_ANALYSIS_INTERVAL
    assert defaulted["model"]["optimization"]["minAgreement"] == api.DEFAULT_MIN_AGREEMENT
    assert "target" not in defaulted["autoscaling"]  # per-metric default, applied by api.py


@pytest.mark.parametrize("path", ["examples/digits.yaml", "examples/minimal.yaml"])
def test_examples_parse(path: str) -> None:
    obj = yaml.safe_load((CRD_PATH.parents[1] / path).read_text())
    assert (obj["apiVersion"], obj["kind"]) == (c.API_VERSION, c.KIND)
    api.parse_spec(obj["spec"], name=obj["metadata"]["name"])


def test_the_conditions_description_names_every_artifact_reason(crd: dict[str, Any]) -> None:
    """`kubectl explain modeldeployment.status.conditions` is where a user looks up a reason."""
    from modeldeploy.planning.build import Reason

    text = " ".join(_schema(crd)["properties"]["status"]["properties"]["conditions"]["description"].split())
    reasons = {v for k, v in vars(Reason).items() if k.isupper()}
    assert reasons and all(r in text for r in reasons), sorted(r for r in reasons if r not in text)
