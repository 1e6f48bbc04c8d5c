"""Built revisions without a cluster: the build Job, the serving pods' fetch init container, the settings."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from modeldeploy import api
from modeldeploy import constants as c
from modeldeploy.config import Settings, from_env
from modeldeploy.resources import Images, build_deployment, quantity
from modeldeploy.resources import build_job as bj
from modeldeploy.resources.artifact_store import ArtifactStoreRef, store_env
from modeldeploy.resources.deployment import ArtifactFetch, loader_env
from tests.integration.invalid_specs import BASE_SPEC, apply_patch
from tests.support import chart

UID = "0b8c1f5e-3d7a-4f3e-9a51-6a1c2f0e9b11"
IMAGES = Images(serving="registry.local/triton:1", loader="registry.local/loader:1",
                converter="registry.local/converter:1", serving_backend="python-onnx")
STORE = ArtifactStoreRef(uri="s3://artifacts/team-a", secret="artifact-store")
KEY = "digits-36b63aabb80daca386d31b25979672ae"


def _spec(patch: dict[str, Any] | None = None) -> api.ModelDeploymentSpec:
    return api.parse_spec(apply_patch(BASE_SPEC, patch or {}), name="digits")


def _job(patch: dict[str, Any] | None = None, name: str = "digits", store: ArtifactStoreRef = STORE) -> dict[str, Any]:
    return bj.build_build_job(name, "ml", UID, _spec(patch), "abc1234567", IMAGES, store)


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# ---------------------------------------------------------------- the build Job


def test_job_is_named_owned_and_labelled_like_the_validation_job() -> None:
    job = _job()
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    meta = job["metadata"]
    assert (meta["name"], meta["namespace"]) == ("digits-build-abc1234567", "ml")
    assert meta["ownerReferences"] == [{"apiVersion": c.API_VERSION, "kind": c.KIND, "name": "digits", "uid": UID,
                                        "controller": True, "blockOwnerDeletion": True}]
    assert meta["labels"][c.LABEL_NAME] == "digits" and meta["labels"][c.LABEL_REVISION] == "abc1234567"
    assert meta["labels"][c.LABEL_APP_COMPONENT] == bj.COMPONENT
    # the pod is never a serving pod: no name label (Services and the PDB select on it), no revision
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert c.LABEL_NAME not in pod_labels and c.LABEL_REVISION not in pod_labels
    assert pod_labels[c.LABEL_MANAGED_BY] == c.MANAGED_BY
    # what the `<name>-build` NetworkPolicy selects (test_networkpolicy.py): the component and the model
    assert pod_labels[c.LABEL_APP_COMPONENT] == bj.COMPONENT and pod_labels[c.LABEL_BUILD_OF] == "digits"


def test_long_names_fit_a_label_and_stay_apart() -> None:
    a, b = bj.job_name("m" * 56, "abc1234567"), bj.job_name("m" * 55 + "n", "abc1234567")
    assert len(a) <= 63 and len(b) <= 63 and a != b and a.endswith("-build-abc1234567")


def test_retries_only_what_a_retry_can_fix() -> None:
    spec = _job()["spec"]
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    assert spec["backoffLimit"] >= 2
    rules = spec["podFailurePolicy"]["rules"]
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert fail["onExitCodes"] == {"containerName": bj.CONTAINER, "operator": "In", "values": [1, 2]}
    ignore = next(r for r in rules if r["action"] == "Ignore")
    assert ignore["onPodConditions"] == [{"type": "DisruptionTarget"}]
    assert _pod(_job())["restartPolicy"] == "Never"  # podFailurePolicy needs it


def test_pod_meets_restricted_pod_security_and_never_talks_to_the_api() -> None:
    pod = _pod(_job())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False


GPU_NODES = {"serving": {"gpus": 2, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100"},
                         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                         "priorityClassName": "ml-serving",
                         "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}}}
INT8 = {"model": {"optimization": {"quantize": "int8", "minAgreement": 0.98}}}


def _merge(*patches: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in patches:
        for k, v in p.items():
            out[k] = {**out.get(k, {}), **v}
    return out


def test_scheduled_like_the_serving_pods() -> None:
    for patch in (GPU_NODES, _merge(GPU_NODES, INT8)):
        job_pod = _pod(_job(patch))
        serving = build_deployment("digits", "ml", UID, _spec(patch), "abc1234567", 1, IMAGES, "stable")
        serving_pod = serving["spec"]["template"]["spec"]
        for key in ("nodeSelector", "tolerations", "priorityClassName"):
            assert job_pod[key] == serving_pod[key]
        (build,), triton = job_pod["containers"], serving_pod["containers"][0]
        # the builder gets the serving pods' CPU and memory (half the requests when the gate's
        # Triton shares the pod), never a GPU: it does not use one
        assert build["resources"] == ({"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
                                      if "optimization" in patch.get("model", {}) else
                                      {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}})
        assert triton["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert _env(build)["MD_ARTIFACT_DEVICE"] == "nvidia.com/gpu=NVIDIA-H100"
    assert _env(_pod(_job({"serving": {"gpus": 0}}))["containers"][0])["MD_ARTIFACT_DEVICE"] == "cpu"


def test_without_int8_there_is_no_gate_and_no_triton() -> None:
    pod = _pod(_job(GPU_NODES))
    assert "initContainers" not in pod
    (build,) = pod["containers"]
    assert not {"MD_GATE_TRITON_URL", "MD_GATE_REPOSITORY"} & set(_env(build))
    assert {v["name"] for v in pod["volumes"]} == {"model-repository", "tmp"}


def test_int8_gates_run_through_the_serving_image_triton_beside_the_builder() -> None:
    patch = _merge(GPU_NODES, INT8)
    pod = _pod(_job(patch))
    serving = build_deployment("digits", "ml", UID, _spec(patch), "abc1234567", 1, IMAGES, "stable")
    serving_triton = serving["spec"]["template"]["spec"]["containers"][0]
    (gate,) = pod["initContainers"]
    (build,) = pod["containers"]
    assert gate["name"] == bj.GATE_CONTAINER and gate["restartPolicy"] == "Always"  # a native sidecar
    # the serving pods' image, and the serving container's resources: GPUs on Triton, which uses them
    assert gate["image"] == serving_triton["image"] == IMAGES.serving
    # (the pod asks for one serving pod's CPU and memory: half each, the limits whole)
    assert gate["resources"]["limits"] == serving_triton["resources"]["limits"]
    assert gate["resources"]["requests"] == {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "2"}
    assert gate["resources"]["limits"]["nvidia.com/gpu"] == gate["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in json.dumps(build["resources"])
    # explicit model control on the builder's repository, HTTP on loopback only, no gRPC, no metrics
    assert gate["command"] == ["tritonserver"]
    args = gate["args"]
    for flag in ("--model-repository=/models", "--model-control-mode=explicit", "--http-address=127.0.0.1",
                 "--http-port=8000", "--allow-grpc=false", "--allow-metrics=false"):
        assert flag in args
    assert "ports" not in gate and not any(k.endswith("Probe") for k in gate)  # nothing outside the pod calls it
    env = _env(build)
    assert env["MD_GATE_TRITON_URL"] == "http://127.0.0.1:8000" and env["MD_GATE_REPOSITORY"] == "/models"
    assert env["MD_REPOSITORY"] == "/models" and env["MD_BACKEND"] == "python-onnx"  # the config it writes
    # Triton reads the builder's repository, read-only; /dev/shm for the python backend
    mounts = {m["name"]: m for m in gate["volumeMounts"]}
    assert mounts["model-repository"] == {"name": "model-repository", "mountPath": "/models", "readOnly": True}
    assert mounts["dshm"]["mountPath"] == "/dev/shm" and mounts["tmp"]["mountPath"] == "/tmp"
    assert {v["name"] for v in pod["volumes"]} == {"model-repository", "tmp", "dshm"}
    # Pod Security "restricted" for the sidecar too
    sc = gate["securityContext"]
    assert sc == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                  "readOnlyRootFilesystem": True, "runAsNonRoot": True}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # the Job's exit-code rules name the builder: a sidecar's exit never fails the build
    rule = _job(patch)["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["onExitCodes"]["containerName"] == bj.CONTAINER


def test_the_gate_settings_do_not_change_the_key() -> None:
    from modeldeploy.artifact.key import artifact_key
    from modeldeploy.artifact.options import build_options

    (build,) = _pod(_job(_merge(GPU_NODES, INT8)))["containers"]
    env = {k: v for k, v in _env(build).items() if isinstance(v, str)}
    opts, settings = build_options([], env)
    without = {k: v for k, v in env.items() if not k.startswith("MD_GATE_")}
    opts2, settings2 = build_options([], without)
    assert settings.gate is not None and settings2.gate is None
    assert artifact_key(settings, scope=opts.scope, device=opts.device) == \
        artifact_key(settings2, scope=opts2.scope, device=opts2.device)


def test_runs_the_artifact_build_with_the_loaders_environment_and_the_store() -> None:
    spec = _spec()
    (container,) = _pod(_job())["containers"]
    assert container["command"] == ["python", "-m", "modeldeploy.artifact", "build"]
    assert container["image"] == IMAGES.loader
    env = _env(container)
    for var in loader_env(spec, IMAGES):  # the same model settings as the loader init container
        assert env[var["name"]] == var.get("value", var.get("valueFrom"))
    assert env["MD_ARTIFACT_STORE"] == "s3://artifacts/team-a"
    assert env["MD_STORE_AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "artifact-store", "key": "AWS_SECRET_ACCESS_KEY", "optional": True}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY", "optional": True}}
    assert env["MD_ARTIFACT_SCOPE"] == "ml/s3-creds"
    assert "MD_ARTIFACT_KEY" not in env  # the builder computes the key (the operator does not yet)
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {c.MODEL_REPOSITORY_PATH, "/tmp"}


def test_a_model_that_needs_torch_builds_in_the_converter_image() -> None:
    (container,) = _pod(_job({"model": {"format": "torchscript", "source": {"uri": "s3://m/model.pt"},
                                        "inputs": [{"name": "x", "dtype": "float32", "shape": [3, 224, 224]}]}}))[
        "containers"]
    assert container["image"] == IMAGES.converter


def test_store_credentials_only_by_reference_and_an_endpoint_setting_wins() -> None:
    env = store_env(ArtifactStoreRef(uri="s3://a", secret="st", endpoint="http://minio.store:9000"))
    by_name = {e["name"]: e for e in env}
    assert by_name["MD_STORE_AWS_ENDPOINT_URL"] == {"name": "MD_STORE_AWS_ENDPOINT_URL",
                                                    "value": "http://minio.store:9000"}
    assert len([e for e in env if e["name"] == "MD_STORE_AWS_ENDPOINT_URL"]) == 1
    assert all("value" not in e for e in env if e["name"].startswith("MD_STORE_AWS_") and "ENDPOINT" not in e["name"])
    assert store_env(ArtifactStoreRef(uri="s3://a")) == [{"name": "MD_ARTIFACT_STORE", "value": "s3://a"}]


# ---------------------------------------------------------------- serving pods of a built revision


def _deployment(artifact: ArtifactFetch | None) -> dict[str, Any]:
    return build_deployment("digits", "ml", UID, _spec({"model": {"source": {"uri": "pvc://claim/model.onnx"}}}),
                            "abc1234567", 3, IMAGES, "stable", artifact=artifact)


def test_serving_pods_of_a_built_revision_only_fetch_the_artifact() -> None:
    pod = _deployment(ArtifactFetch(key=KEY, store=STORE))["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["name"] == c.CONTAINER_LOADER
    assert init["command"] == ["python", "-m", "modeldeploy.artifact", "fetch", "--key", KEY]
    assert init["image"] == IMAGES.loader
    env = _env(init)
    assert env["MD_ARTIFACT_STORE"] == "s3://artifacts/team-a"
    assert env["MD_MODEL_NAME"] == "digits" and env["MD_REPOSITORY"] == c.MODEL_REPOSITORY_PATH
    assert env["MD_STORE_AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "artifact-store"
    # nothing of the loader: no source, no model credentials, no conversion settings, no source volume
    assert not {"MD_SOURCE_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MD_QUANTIZE"} & env.keys()
    assert {m["name"] for m in init["volumeMounts"]} == {"model-repository", "tmp"}
    assert "model-source" not in {v["name"] for v in pod["volumes"]}
    assert init["securityContext"]["readOnlyRootFilesystem"] is True


def test_without_an_artifact_the_serving_pods_run_the_loader_as_before() -> None:
    pod = _deployment(None)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["python", "-m", "modeldeploy.loader"]
    assert "model-source" in {v["name"] for v in pod["volumes"]}


def test_the_key_changes_only_the_init_container() -> None:
    a = _deployment(ArtifactFetch(key=KEY, store=STORE))
    b = _deployment(ArtifactFetch(key="digits-" + "0" * 32, store=STORE))
    assert a["metadata"] == b["metadata"]
    assert a["spec"]["template"]["spec"]["containers"] == b["spec"]["template"]["spec"]["containers"]


PVC_STORE = ArtifactStoreRef(uri="pvc://model-artifacts", secret="ignored-for-a-claim")


def test_a_pvc_store_is_mounted_read_write_in_the_build_and_read_only_in_serving_pods() -> None:
    build = _pod(_job(store=PVC_STORE))
    (container,) = build["containers"]
    assert _env(container)["MD_ARTIFACT_STORE"] == "file:///artifact-store"
    assert not any(k.startswith("MD_STORE_") for k in _env(container))  # a claim has no credentials
    assert {"name": "artifact-store", "mountPath": "/artifact-store", "readOnly": False} in container["volumeMounts"]
    assert {"name": "artifact-store",
            "persistentVolumeClaim": {"claimName": "model-artifacts", "readOnly": False}} in build["volumes"]
    serving = _deployment(ArtifactFetch(key=KEY, store=PVC_STORE))["spec"]["template"]["spec"]
    (init,) = serving["initContainers"]
    assert _env(init)["MD_ARTIFACT_STORE"] == "file:///artifact-store"
    assert {"name": "artifact-store", "mountPath": "/artifact-store", "readOnly": True} in init["volumeMounts"]
    assert {"name": "artifact-store",
            "persistentVolumeClaim": {"claimName": "model-artifacts", "readOnly": True}} in serving["volumes"]
    # Triton never sees the store: only the fetch reads it
    (triton,) = serving["containers"]
    assert "artifact-store" not in {m["name"] for m in triton["volumeMounts"]}
    # an S3 store mounts nothing
    assert "artifact-store" not in {v["name"] for v in _pod(_job())["volumes"]}
    # an int8 build (the gate's Triton beside the builder) keeps the claim too
    gated = _pod(_job(INT8, store=PVC_STORE))
    assert {v["name"] for v in gated["volumes"]} >= {"artifact-store", "dshm", "model-repository", "tmp"}


# ---------------------------------------------------------------- settings


def test_settings_default_off_and_read_from_the_environment() -> None:
    assert Settings().artifacts_enabled is False
    s = from_env({"MD_ARTIFACT_STORE": "s3://artifacts", "MD_ARTIFACT_STORE_SECRET": "s3-creds",
                  "MD_ARTIFACT_STORE_ENDPOINT": "http://minio:9000"})
    assert s.artifacts_enabled and (s.artifact_store, s.artifact_store_secret, s.artifact_store_endpoint) == (
        "s3://artifacts", "s3-creds", "http://minio:9000")
    assert from_env({"MD_ARTIFACT_STORE": "pvc://model-artifacts"}).artifacts_enabled


@pytest.mark.parametrize("env", [{"MD_ARTIFACT_STORE": "artifacts"}, {"MD_ARTIFACT_STORE": "file:///artifacts"},
                                 {"MD_ARTIFACT_STORE": "s3://a", "MD_ARTIFACT_STORE_ENDPOINT": "minio:9000"},
                                 {"MD_ARTIFACT_STORE": "pvc://claim/sub/dir"}, {"MD_ARTIFACT_STORE": "pvc://Claim"},
                                 {"MD_ARTIFACT_STORE": "pvc://claim", "MD_ARTIFACT_CACHE_URL": "http://agent:8090"}])
def test_settings_refuse_a_store_the_pods_cannot_use(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="MD_ARTIFACT_STORE"):
        from_env(env)


@pytest.mark.skipif(chart.helm() is None, reason="helm is not cached (make binaries)")
def test_the_chart_takes_a_pvc_store_and_keeps_the_node_cache_agent_to_s3_stores() -> None:
    def operator_env(*sets: str) -> dict[str, str]:
        dep = chart.operator_deployment(chart.render(*sets))
        return {e["name"]: e.get("value", "") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}

    agent = ("artifactCache.enabled=true", "artifactCache.store=s3://artifacts")
    env = operator_env("artifacts.store=pvc://model-artifacts", *agent)
    assert env["MD_ARTIFACT_STORE"] == "pvc://model-artifacts"
    assert env["MD_ARTIFACT_CACHE_URL"] == ""  # pods of a claim read it directly
    from_env(env)  # and the operator accepts what the chart gives it
    assert operator_env("artifacts.store=s3://artifacts", *agent)["MD_ARTIFACT_CACHE_URL"].startswith("http://")
    with pytest.raises(AssertionError, match="/artifacts/store"):  # the schema refuses a path after the claim
        chart.render("artifacts.store=pvc://model-artifacts/sub")


def _requested(pod: dict[str, Any], resource: str) -> Decimal:
    """What the scheduler adds up for a pod with native sidecars: every container's request (a
    limit alone counts as the request)."""
    total = Decimal(0)
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        res = container.get("resources") or {}
        value = (res.get("requests") or {}).get(resource) or (res.get("limits") or {}).get(resource)
        total += quantity.parse(value) if value else 0
    return total


@pytest.mark.parametrize("resources", [
    {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
    {"limits": {"cpu": "3", "memory": "6Gi"}},  # limits only: the API server would copy them into requests
    {"requests": {"cpu": "1500m", "memory": "3Gi"}},
])
def test_the_int8_build_pod_fits_where_a_serving_pod_fits(resources: dict[str, Any]) -> None:
    patch = _merge({"serving": {"gpus": 1, "resources": resources}}, INT8)
    job_pod = _pod(_job(patch))
    serving_pod = build_deployment("digits", "ml", UID, _spec(patch), "abc1234567", 1, IMAGES,
                                   "stable")["spec"]["template"]["spec"]
    (triton,) = [ctr for ctr in serving_pod["containers"] if ctr["name"] == c.CONTAINER_SERVING]
    for resource in ("cpu", "memory", "nvidia.com/gpu"):
        want = _requested({"containers": [triton]}, resource)
        assert want > 0 and _requested(job_pod, resource) == want, resource
    for container in [*job_pod["initContainers"], *job_pod["containers"]]:  # each may use what one Triton may
        for name, value in (resources.get("limits") or {}).items():
            assert container["resources"]["limits"][name] == value
