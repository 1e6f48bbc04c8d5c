"""Builders of the Deployment, Services and PDB: labels, ownership, GPUs, security, probes, determinism."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from modeldeploy import api
from modeldeploy import constants as c
from modeldeploy.resources import Images, build_deployment, build_pdb, build_services, image_inputs
from modeldeploy.resources import deployment as dep_mod
from tests.integration.invalid_specs import BASE_SPEC, apply_patch

UID = "0b8c1f5e-3d7a-4f3e-9a51-6a1c2f0e9b11"
IMAGES = Images(serving="registry.local/triton:1", loader="registry.local/loader:1",
                converter="registry.local/converter:1", serving_backend="python-onnx")


def _spec(patch: dict[str, Any] | None = None) -> api.ModelDeploymentSpec:
    return api.parse_spec(apply_patch(BASE_SPEC, patch or {}), name="digits")


def _deployment(patch: dict[str, Any] | None = None, *, role: str = "stable", replicas: int = 2,
                images: Images = IMAGES) -> dict[str, Any]:
    return build_deployment(md_name="digits", namespace="ml", owner_uid=UID, spec=_spec(patch), revision="abc1234567",
                            replicas=replicas, images=images, role=role)


def _pod(d: dict[str, Any]) -> dict[str, Any]:
    return d["spec"]["template"]["spec"]


def _container(d: dict[str, Any], name: str) -> dict[str, Any]:
    pod = _pod(d)
    return next(x for x in pod.get("initContainers", []) + pod["containers"] if x["name"] == name)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _all_objects() -> list[dict[str, Any]]:
    return [_deployment(), *build_services("digits", "ml", UID, "abc1234567", "def7654321"),
            build_pdb("digits", "ml", UID, 2)]


# ---------------------------------------------------------------- metadata


def test_deployment_name_labels_and_selector() -> None:
    d = _deployment()
    assert (d["apiVersion"], d["kind"]) == ("apps/v1", "Deployment")
    meta = d["metadata"]
    assert (meta["name"], meta["namespace"]) == ("digits-abc1234567", "ml")
    assert meta["labels"] == {
        c.LABEL_NAME: "digits",
        c.LABEL_REVISION: "abc1234567",
        c.LABEL_ROLE: "stable",
        c.LABEL_APP_NAME: "digits",
        c.LABEL_APP_INSTANCE: "digits",
        c.LABEL_APP_VERSION: "3",
        c.LABEL_APP_COMPONENT: c.COMPONENT_SERVER,
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
    }
    assert d["spec"]["selector"] == {"matchLabels": {c.LABEL_NAME: "digits", c.LABEL_REVISION: "abc1234567"}}
    pod_labels = d["spec"]["template"]["metadata"]["labels"]
    assert pod_labels == {k: v for k, v in meta["labels"].items() if k != c.LABEL_ROLE}
    assert d["spec"]["replicas"] == 2


def test_role_is_not_in_pod_template() -> None:
    """Promoting a canary relabels its Deployment but must not restart its pods."""
    stable, canary = _deployment(role="stable"), _deployment(role="canary")
    assert stable["metadata"]["labels"][c.LABEL_ROLE] == "stable"
    assert canary["metadata"]["labels"][c.LABEL_ROLE] == "canary"
    assert stable["spec"]["template"] == canary["spec"]["template"]


@pytest.mark.parametrize("index", range(5))
def test_every_object_is_owned_by_the_model_deployment(index: int) -> None:
    obj = _all_objects()[index]
    assert obj["metadata"]["namespace"] == "ml"
    assert obj["metadata"]["ownerReferences"] == [{
        "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "name": "digits", "uid": UID,
        "controller": True, "blockOwnerDeletion": True,
    }]
    assert obj["metadata"]["labels"][c.LABEL_NAME] == "digits"
    assert obj["metadata"]["labels"][c.LABEL_MANAGED_BY] == "modeldeploy"


def test_objects_are_deterministic_and_json_plain() -> None:
    first = _all_objects()
    second = _all_objects()
    assert first == second
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert json.loads(json.dumps(first)) == first  # only plain JSON types (no tuples, proxies)


def test_same_spec_in_other_key_order_builds_same_deployment() -> None:
    shuffled = json.loads(json.dumps(BASE_SPEC))
    shuffled = {k: shuffled[k] for k in reversed(list(shuffled))}
    spec_a = api.parse_spec(BASE_SPEC, name="digits")
    spec_b = api.parse_spec(shuffled, name="digits")
    args = {"md_name": "digits", "namespace": "ml", "owner_uid": UID, "revision": "r", "replicas": 1,
            "images": IMAGES, "role": "stable"}
    assert build_deployment(spec=spec_a, **args) == build_deployment(spec=spec_b, **args)


def test_no_empty_collections_or_none_values() -> None:
    """The apiserver drops empty maps/lists and nulls, so emitting them would look like drift forever."""

    def walk(value: Any, path: str) -> None:
        assert value is not None, path
        if isinstance(value, dict):
            for k, v in value.items():
                if k != "emptyDir":
                    assert v != {} and v != [], f"{path}.{k}"
                walk(v, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")

    for obj in _all_objects():
        walk(obj, obj["kind"])
    walk(_deployment({"serving": {"gpus": 0, "resources": None}}), "cpu-deployment")


# ---------------------------------------------------------------- GPUs and resources


@pytest.mark.parametrize(
    ("resource_name", "gpus"),
    [("nvidia.com/gpu", 1), ("nvidia.com/gpu", 4), ("nvidia.com/mig-1g.10gb", 1), ("nvidia.com/mig-3g.40gb", 2)],
)
def test_gpu_requests_equal_limits(resource_name: str, gpus: int) -> None:
    resources = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    d = _deployment({"serving": {"gpus": gpus, "gpuResourceName": resource_name, "resources": resources}})
    res = _container(d, c.CONTAINER_SERVING)["resources"]
    assert res["requests"] == {"cpu": "2", "memory": "8Gi", resource_name: str(gpus)}
    assert res["limits"] == {"memory": "8Gi", resource_name: str(gpus)}
    loader = _container(d, c.CONTAINER_LOADER)["resources"]
    assert loader == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_cpu_only_has_no_gpu_and_surges() -> None:
    d = _deployment({"serving": {"gpus": 0}})
    res = _container(d, c.CONTAINER_SERVING)["resources"]
    assert "nvidia.com/gpu" not in res.get("requests", {}) and "limits" not in res
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": 0}
    assert _env(_container(d, c.CONTAINER_LOADER))["MD_GPUS"] == "0"


def test_cpu_only_without_user_resources_has_no_resources_key() -> None:
    d = _deployment({"serving": {"gpus": 0, "resources": None}})
    assert "resources" not in _container(d, c.CONTAINER_SERVING)
    assert "resources" not in _container(d, c.CONTAINER_LOADER)


# ---------------------------------------------------------------- security


def test_pod_security_context_is_restricted() -> None:
    pod = _pod(_deployment())
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", [c.CONTAINER_LOADER, c.CONTAINER_SERVING])
def test_every_container_is_restricted(name: str) -> None:
    sc = _container(_deployment(), name)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert "privileged" not in sc and "add" not in sc["capabilities"]


def test_credentials_only_by_secret_reference() -> None:
    loader = _container(_deployment(), c.CONTAINER_LOADER)
    secret_env = [e for e in loader["env"] if e["name"].startswith("AWS_")]
    assert [e["name"] for e in secret_env] == list(dep_mod.CREDENTIAL_KEYS)
    for e in secret_env:
        assert "value" not in e
        assert e["valueFrom"] == {"secretKeyRef": {"name": "s3-creds", "key": e["name"], "optional": True}}
    triton = _container(_deployment(), c.CONTAINER_SERVING)
    assert not any(e["name"].startswith("AWS_") for e in triton.get("env", []))
    assert "envFrom" not in loader and "envFrom" not in triton


def test_no_secret_env_without_secret() -> None:
    loader = _container(_deployment({"model": {"source": {"credentialsSecret": None}}}), c.CONTAINER_LOADER)
    assert not any(e["name"].startswith("AWS_") for e in loader["env"])


# ---------------------------------------------------------------- containers


def test_loader_env_contract() -> None:
    env = _env(_container(_deployment({"model": {"source": {"sha256": "AB" * 32}}}), c.CONTAINER_LOADER))
    assert env["MD_SOURCE_URI"] == "s3://models/digits/3/model.onnx"
    assert env["MD_FORMAT"] == "onnx"
    assert env["MD_MODEL_NAME"] == "digits"
    assert env["MD_MODEL_VERSION"] == "3"
    assert env["MD_MAX_BATCH_SIZE"] == "32"
    assert json.loads(env["MD_DYNAMIC_BATCHING"]) == {"maxQueueDelayMicroseconds": 200, "preferredBatchSizes": [8, 16]}
    assert env["MD_QUANTIZE"] == "none"
    assert env["MD_MIN_AGREEMENT"] == "0.99"
    assert env["MD_WARMUP"] == "true"
    assert env["MD_GPUS"] == "1"
    assert env["MD_INSTANCES_PER_GPU"] == "1"
    assert env["MD_REPOSITORY"] == "/models"
    assert env["MD_SHA256"] == "ab" * 32
    assert env["MD_BACKEND"] == "python-onnx"
    assert "MD_SOURCE_MOUNT" not in env
    assert all(isinstance(v, str) for k, v in env.items() if not k.startswith("AWS_"))


def test_loader_env_omits_unset_options() -> None:
    env = _env(_container(_deployment({"model": {"maxBatchSize": 0, "dynamicBatching": None}}), c.CONTAINER_LOADER))
    assert "MD_DYNAMIC_BATCHING" not in env and "MD_SHA256" not in env
    assert env["MD_MAX_BATCH_SIZE"] == "0"


def test_torchscript_inputs_and_validation_data_reach_the_loader_as_it_parses_them() -> None:
    from modeldeploy.loader.settings import InputShape, from_sources

    d = _deployment({"model": {
        "format": "torchscript", "validationDataUri": "s3://models/digits/val.npz",
        "inputs": [{"name": "x", "shape": [1, 8, 8]}, {"name": "ids", "dtype": "int64", "shape": [16]}],
    }})
    env = _env(_container(d, c.CONTAINER_LOADER))
    assert env["MD_VALIDATION_URI"] == "s3://models/digits/val.npz"
    settings = from_sources([], {k: v for k, v in env.items() if isinstance(v, str)})
    assert settings.input_shapes == (InputShape("x", "float32", (1, 8, 8)), InputShape("ids", "int64", (16,)))
    assert settings.validation_uri == "s3://models/digits/val.npz"


def test_loader_env_omits_inputs_and_validation_data_when_unset() -> None:
    env = _env(_container(_deployment({}), c.CONTAINER_LOADER))
    assert "MD_INPUT_SHAPES" not in env and "MD_VALIDATION_URI" not in env


def test_pvc_source_is_mounted_read_only_into_the_loader() -> None:
    d = _deployment({"model": {"source": {"uri": "pvc://model-store/digits/3/model.onnx"}}})
    volumes = {v["name"]: v for v in _pod(d)["volumes"]}
    assert volumes["model-source"]["persistentVolumeClaim"] == {"claimName": "model-store", "readOnly": True}
    loader = _container(d, c.CONTAINER_LOADER)
    assert {"name": "model-source", "mountPath": "/source", "readOnly": True} in loader["volumeMounts"]
    assert _env(loader)["MD_SOURCE_MOUNT"] == "/source"
    triton = _container(d, c.CONTAINER_SERVING)
    assert all(m["name"] != "model-source" for m in triton["volumeMounts"])


@pytest.mark.parametrize(
    ("patch", "triton", "loader"),
    [
        ({}, "registry.local/triton:1", "registry.local/loader:1"),
        ({"model": {"format": "torchscript"}}, "registry.local/triton:1", "registry.local/converter:1"),
        ({"model": {"format": "pytorch-export"}}, "registry.local/triton:1", "registry.local/converter:1"),
        ({"serving": {"image": "my/triton:2", "loaderImage": "my/loader:2"}}, "my/triton:2", "my/loader:2"),
        ({"model": {"format": "torchscript"}, "serving": {"loaderImage": "my/loader:2"}},
         "registry.local/triton:1", "my/loader:2"),
    ],
)
def test_images(patch: dict[str, Any], triton: str, loader: str) -> None:
    d = _deployment(patch)
    assert _container(d, c.CONTAINER_SERVING)["image"] == triton
    assert _container(d, c.CONTAINER_LOADER)["image"] == loader
    assert image_inputs(_spec(patch), IMAGES) == (triton, loader, "python-onnx")


def test_triton_container_command_ports_and_volumes() -> None:
    d = _deployment()
    pod = _pod(d)
    assert [x["name"] for x in pod["initContainers"]] == [c.CONTAINER_LOADER]
    assert [x["name"] for x in pod["containers"]] == [c.CONTAINER_SERVING]
    triton = _container(d, c.CONTAINER_SERVING)
    assert triton["command"][:2] == ["/bin/sh", "-c"] and "exec tritonserver" in triton["command"][2]
    assert "--http-restricted-api=" in triton["command"][2] and "--grpc-restricted-protocol=" in triton["command"][2]
    for flag in ("--model-repository=/models", "--model-control-mode=none", "--strict-readiness=true",
                 "--allow-sagemaker=false", "--allow-vertex-ai=false", "--exit-on-error=true"):
        assert flag in triton["args"]
    assert [(p["name"], p["containerPort"]) for p in triton["ports"]] == [("http", 8000), ("grpc", 8001),
                                                                           ("metrics", 8002)]
    assert {"name": "model-repository", "mountPath": "/models", "readOnly": True} in triton["volumeMounts"]
    loader = _container(d, c.CONTAINER_LOADER)
    assert {"name": "model-repository", "mountPath": "/models"} in loader["volumeMounts"]
    assert loader["command"] == ["python", "-m", "modeldeploy.loader"]
    for container in (triton, loader):
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    # 4 x the default 10 GiB download limit + 1 GiB (resources/deployment.py, docs/loader-contract.md)
    assert volumes["model-repository"] == {"name": "model-repository", "emptyDir": {"sizeLimit": "41Gi"}}
    assert "sizeLimit" in volumes["tmp"]["emptyDir"]


@pytest.mark.parametrize(("timeout", "failures"), [(600, 600), (10, 10), (95, 95), (86400, 86400)])
def test_probes(timeout: int, failures: int) -> None:
    triton = _container(_deployment({"serving": {"startupTimeoutSeconds": timeout}}), c.CONTAINER_SERVING)
    startup = triton["startupProbe"]
    assert startup["httpGet"] == {"path": "/v2/health/ready", "port": "http", "scheme": "HTTP"}
    assert startup["failureThreshold"] == failures
    assert startup["periodSeconds"] * startup["failureThreshold"] >= timeout
    assert startup["periodSeconds"] == 1  # Ready within a second of Triton, not on a 10 s tick
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_graceful_shutdown_drains_before_triton_stops() -> None:
    d = _deployment()
    triton = _container(d, c.CONTAINER_SERVING)
    sleep = triton["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = _pod(d)["terminationGracePeriodSeconds"]
    assert sleep > 0 and grace > sleep + dep_mod.TRITON_EXIT_TIMEOUT_S
    assert f"--exit-timeout-secs={dep_mod.TRITON_EXIT_TIMEOUT_S}" in triton["args"]


def test_scheduling_fields() -> None:
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    d = _deployment({"serving": {"nodeSelector": {"nvidia.com/gpu.product": "H100"}, "tolerations": tolerations,
                                 "priorityClassName": "inference-high"}})
    pod = _pod(d)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["tolerations"] == tolerations
    assert pod["priorityClassName"] == "inference-high"
    assert pod["topologySpreadConstraints"] == [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {c.LABEL_NAME: "digits"}},
    }]
    plain = _pod(_deployment())
    assert "nodeSelector" not in plain and "tolerations" not in plain and "priorityClassName" not in plain


def test_deployment_spec_settings() -> None:
    d = _deployment({"serving": {"startupTimeoutSeconds": 900}})
    assert d["spec"]["revisionHistoryLimit"] <= 3
    assert d["spec"]["progressDeadlineSeconds"] > 900
    assert d["spec"]["template"]["metadata"]["annotations"] == {
        "kubectl.kubernetes.io/default-container": c.CONTAINER_SERVING}


def test_builder_does_not_mutate_inputs() -> None:
    spec = _spec()
    before = copy.deepcopy(spec)
    build_deployment("digits", "ml", UID, spec, "r", 1, IMAGES, "stable")
    assert spec == before


# ---------------------------------------------------------------- services and PDB


def test_services_selectors_and_ports() -> None:
    main, stable, canary = build_services("digits", "ml", UID, stable_revision="aaa", canary_revision="bbb")
    assert [s["metadata"]["name"] for s in (main, stable, canary)] == ["digits", "digits-stable", "digits-canary"]
    assert main["spec"]["selector"] == {c.LABEL_NAME: "digits"}
    assert stable["spec"]["selector"] == {c.LABEL_NAME: "digits", c.LABEL_REVISION: "aaa"}
    assert canary["spec"]["selector"] == {c.LABEL_NAME: "digits", c.LABEL_REVISION: "bbb"}
    assert stable["metadata"]["labels"][c.LABEL_ROLE] == "stable"
    assert canary["metadata"]["labels"][c.LABEL_ROLE] == "canary"
    assert c.LABEL_ROLE not in main["metadata"]["labels"]
    for svc in (main, stable, canary):
        assert (svc["apiVersion"], svc["kind"], svc["spec"]["type"]) == ("v1", "Service", "ClusterIP")
        assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
            ("http", 8000, "http"), ("grpc", 8001, "grpc"), ("metrics", 8002, "metrics")]


@pytest.mark.parametrize("canary", [None, ""])
def test_canary_service_falls_back_to_stable(canary: str | None) -> None:
    _, stable, canary_svc = build_services("digits", "ml", UID, "aaa", canary)
    assert canary_svc["spec"]["selector"] == stable["spec"]["selector"]


@pytest.mark.parametrize("replicas", [0, 1, 2, 10, None])
def test_pdb(replicas: int | None) -> None:
    pdb = build_pdb("digits", "ml", UID, replicas)
    assert (pdb["apiVersion"], pdb["kind"], pdb["metadata"]["name"]) == ("policy/v1", "PodDisruptionBudget", "digits")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": {c.LABEL_NAME: "digits"}},
                           "unhealthyPodEvictionPolicy": "AlwaysAllow"}


def test_httproute_weights_and_parents() -> None:
    from modeldeploy.api import ParentRef
    from modeldeploy.resources.httproute import build_httproute
    from modeldeploy.rollout.traffic import route_weight

    route = build_httproute("m", "ns", "uid-1", (ParentRef("gw", namespace="edge", section_name="https"),), 30)
    backends = route["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"], b["port"]) for b in backends] == [("m-stable", 70, 8000), ("m-canary", 30, 8000)]
    assert route["spec"]["parentRefs"] == [{"name": "gw", "namespace": "edge", "sectionName": "https"}]
    assert route["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    phases = ("Validating", "Progressing", "Paused", "Promoting", "Promoted", "RollingBack", "RolledBack", None)
    assert [route_weight(p, 25, stable_ready=2, canary_ready=1) for p in phases] == [0, 25, 25, 100, 0, 0, 0, 0]
    # weights follow Ready endpoints: never a share for a backend without a Ready pod
    assert route_weight("Progressing", 25, stable_ready=2, canary_ready=0) == 0
    assert route_weight("Progressing", 25, stable_ready=0, canary_ready=1) == 100
    assert route_weight("Promoting", 25, stable_ready=3, canary_ready=0) == 0


@pytest.mark.parametrize(("fmt", "auto_complete"), [("onnx", False), ("torchscript", False), ("python", True)])
def test_triton_completes_configs_only_for_a_users_python_model(fmt: str, auto_complete: bool) -> None:
    """The loader writes inputs and outputs from the ONNX graph; auto-complete would only start a
    second python-backend stub per pod. A user's python model may define its own config."""
    patch: dict[str, Any] = {"model": {"format": fmt}}
    if fmt == "python":
        patch["model"]["source"] = {"uri": "https://example.com/model.py", "sha256": "a" * 64}
    args = _container(_deployment(patch), c.CONTAINER_SERVING)["args"]
    assert ("--disable-auto-complete-config" not in args) is auto_complete
