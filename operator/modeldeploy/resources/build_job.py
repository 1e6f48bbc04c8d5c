"""The build Job of a revision: its model converted, quantized and gated once, into the artifact store (pure).

The Job runs `python -m modeldeploy.artifact build` (docs/artifacts.md) from the image the
loader init container would use, with the loader's whole environment (the same model settings,
the model's credentialsSecret by reference) plus the store's (MD_ARTIFACT_STORE, the store's
Secret by reference). It is scheduled like the revision's serving pods (node selector,
tolerations, priority class). When the revision quantizes int8, the pod also runs the serving
image's Triton as a native sidecar (an init container with restartPolicy Always: the Job completes
when the builder exits) holding the serving container's resources, GPUs included, and the builder
runs both int8 gates through it (loader/gate_triton.py): the speed gate times the model as Triton
will run it on that device (issue 14 item 6). The builder itself never needs a GPU. The result
comes back as one JSON line in the pod's termination message; planning/build.py reads it. Exit
codes 1 and 2 (deterministic: checksum, format, gate, invalid input) fail the Job at once; the
others (75 transient, e.g. the gate's Triton never came up; 77 store refused; 65 corrupt copy; a
crash) are retried by the Job controller with its backoff.
"""

from __future__ import annotations

import math
from typing import Any, Final

from .. import constants as c
from ..api import ModelDeploymentSpec
from ..tuning.settings import TuneSettings
from . import labels, quantity
from .artifact_store import ArtifactStoreRef, store_env, store_mounts, store_volumes
from .deployment import (
    VOLUME_REPOSITORY,
    VOLUME_SHM,
    VOLUME_SOURCE,
    VOLUME_TMP,
    Images,
    _container_security,
    _pod_security,
    _volumes,
    container_resources,
    loader_env,
    loader_mounts,
    pod_images,
    scheduling,
    triton_mounts,
)

CONTAINER: Final = "build"
COMMAND: Final = ("python", "-m", "modeldeploy.artifact", "build")
COMPONENT: Final = c.COMPONENT_BUILD  # app.kubernetes.io/component of the Job and its pod
TTL_AFTER_FINISHED_S: Final = 3600  # the result is read within seconds; an hour leaves time to debug
ACTIVE_DEADLINE_S: Final = 3600  # a conversion and calibration of a large model; past that the build failed
BACKOFF_LIMIT: Final = 4  # retries of transient failures (75, 77, 65, crashes) before the Job gives up
DETERMINISTIC_EXITS: Final = (1, 2)  # the artifact CLI's: a retry would fail the same way
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
GATE_CONTAINER: Final = "gate-triton"  # the serving image's Triton the int8 gates run through
GATE_EXIT_TIMEOUT_S: Final = 5  # nothing is in flight when the builder has exited
GATE_URL: Final = f"http://127.0.0.1:{c.PORT_HTTP}"  # loopback: the pod's own containers only


def job_name(md_name: str, revision: str) -> str:
    """`<name>-build-<revision>`, shortened with a hash of the name when it would pass 63 characters."""
    return labels.job_name(md_name, "build", revision)


def source_scope(namespace: str, spec: ModelDeploymentSpec) -> str:
    """Where a source without sha256 is resolved (MD_ARTIFACT_SCOPE): a pvc:// claim and the endpoint
    behind an s3:// URI depend on the namespace and its credentials Secret. With a sha256 the key
    ignores it, so the same model in two namespaces is built once."""
    secret = spec.model.source.credentials_secret
    return f"{namespace}/{secret}" if secret else namespace


def gate_device(spec: ModelDeploymentSpec) -> str:
    """The serving device class the int8 speed gate measures (MD_ARTIFACT_DEVICE; in the key only
    for int8): the CPU, or the GPU resource and product the serving pods are scheduled on."""
    serving = spec.serving
    if serving.gpus <= 0:
        return "cpu"
    product = serving.node_selector.get(GPU_PRODUCT_LABEL, "")
    return f"{serving.gpu_resource_name}" + (f"={product}" if product else "")


def gated(spec: ModelDeploymentSpec) -> bool:
    """Whether the build runs the int8 gates, and so needs the gate's Triton beside it."""
    return spec.model.optimization.quantize == "int8"


def tuned(spec: ModelDeploymentSpec) -> bool:
    """Whether the build tunes config.pbtxt (spec.model.optimization.tune), through the same Triton."""
    return spec.model.optimization.tune is not None


def needs_triton(spec: ModelDeploymentSpec) -> bool:
    """The build pod runs the serving image's Triton beside the builder: for the int8 gates or tuning."""
    return gated(spec) or tuned(spec)


def cpu_count(cpu: str) -> int:
    """Whole CPUs a CPU quantity allows, rounded up ("500m" -> 1, "2" -> 2); 0 when unset or unreadable."""
    try:
        value = quantity.parse(cpu) if cpu.strip() else 0
    except ValueError:
        return 0
    return max(1, math.ceil(value)) if value > 0 else 0


def serving_cpus(spec: ModelDeploymentSpec) -> int:
    """The serving container's CPUs: its limit, else its request; 0 when neither is set."""
    res = spec.serving.resources
    return cpu_count(res.limits.get("cpu") or res.requests.get("cpu") or "")


def hardware_class(spec: ModelDeploymentSpec) -> str:
    """The hardware a tuned configuration was measured on (MD_ARTIFACT_HARDWARE; in the key with
    MD_TUNE): the GPUs (resource, count, product label), the serving container's CPU and memory,
    and every node selector label, so another hardware class tunes again instead of reusing."""
    serving, res = spec.serving, spec.serving.resources
    parts = [f"gpu={serving.gpu_resource_name}x{serving.gpus}" if serving.gpus > 0 else "gpu=none"]
    for name in ("cpu", "memory"):
        parts.append(f"{name}={res.limits.get(name) or res.requests.get(name) or '-'}")
    parts += [f"node:{k}={v}" for k, v in sorted(serving.node_selector.items())]
    return ";".join(parts)


def tune_settings(spec: ModelDeploymentSpec) -> TuneSettings | None:
    """MD_TUNE's settings from the spec (None without tuning)."""
    t = spec.model.optimization.tune
    if t is None:
        return None
    return TuneSettings(objective=t.objective, max_p99_s=t.max_p99, budget_s=t.budget,
                        on_bound_miss=t.when_bound_not_met, concurrency=t.concurrency, cpus=serving_cpus(spec))


def build_env(namespace: str, spec: ModelDeploymentSpec, images: Images,
              store: ArtifactStoreRef) -> list[dict[str, Any]]:
    """The loader's environment (the same model settings as the loader init container), then the
    store's; for int8 or tuning, where the gate's Triton listens and its repository (the builder's
    own); for tuning, its settings and the hardware class (both in the artifact key)."""
    gate = [
        {"name": "MD_GATE_TRITON_URL", "value": GATE_URL},
        {"name": "MD_GATE_REPOSITORY", "value": c.MODEL_REPOSITORY_PATH},
    ] if needs_triton(spec) else []
    if (tune := tune_settings(spec)) is not None:
        gate += [{"name": "MD_TUNE", "value": tune.to_env()},
                 {"name": "MD_ARTIFACT_HARDWARE", "value": hardware_class(spec)}]
    return [
        *loader_env(spec, images),
        *store_env(store),
        {"name": "MD_ARTIFACT_SCOPE", "value": source_scope(namespace, spec)},
        {"name": "MD_ARTIFACT_DEVICE", "value": gate_device(spec)},
        *gate,
    ]


def gate_triton_args(repository: str = c.MODEL_REPOSITORY_PATH, port: int = c.PORT_HTTP) -> list[str]:
    """The gate Triton's flags: models only when the builder asks (explicit), HTTP on loopback (no
    probe, Service or other pod reaches it; the builder waits on /v2/health/live), no gRPC, no
    metrics, no cloud front ends. Every flag is in Triton 2.51 (the CPU image) and NVIDIA's images."""
    return [
        f"--model-repository={repository}",
        "--model-control-mode=explicit",
        "--http-address=127.0.0.1",
        f"--http-port={port}",
        "--allow-grpc=false",
        "--allow-metrics=false",
        "--allow-sagemaker=false",
        "--allow-vertex-ai=false",
        f"--exit-timeout-secs={GATE_EXIT_TIMEOUT_S}",
    ]


def _gate_container(spec: ModelDeploymentSpec, images: Images, serving_image: str) -> dict[str, Any]:
    """The serving image's tritonserver as a native sidecar, with the serving container's resources
    (GPUs included): the gates run where and as the serving pods will run the model. It reads the
    builder's repository volume read-only (the builder hard-links the two gate models into it)."""
    container: dict[str, Any] = {
        "name": GATE_CONTAINER,
        "image": serving_image,
        "imagePullPolicy": images.pull_policy,
        "restartPolicy": "Always",  # a native sidecar: started before the builder, stopped after it
        "command": ["tritonserver"],
        "args": gate_triton_args(),
        "env": [{"name": "HOME", "value": "/tmp"}],
        "volumeMounts": triton_mounts(),
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources := split_requests(container_resources(spec, with_gpus=True), spec.serving.gpu_resource_name):
        container["resources"] = resources
    return container


def split_requests(resources: dict[str, Any], gpu_resource: str) -> dict[str, Any]:
    """The serving container's resources for one of the int8 build pod's two containers: the full
    limits, but half the CPU and memory requests (a limit alone would be copied into the request),
    so the pod's requests add up to one serving pod's and it fits wherever a serving pod fits. The
    GPUs stay whole: extended resources are requested as limited, and only the gate's Triton has them."""
    requests = dict(resources.get("requests") or {})
    for name, value in (resources.get("limits") or {}).items():
        requests.setdefault(name, value)
    halved = {k: v if k == gpu_resource else quantity.half(v) for k, v in sorted(requests.items())}
    return {**resources, "requests": halved} if halved else resources


def _pod_spec(namespace: str, spec: ModelDeploymentSpec, images: Images, store: ArtifactStoreRef) -> dict[str, Any]:
    serving_image, image = pod_images(spec, images)
    mounts = [*loader_mounts(spec), *store_mounts(store, read_only=False)]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": images.pull_policy,
        "command": list(COMMAND),
        "env": build_env(namespace, spec, images, store),
        "volumeMounts": mounts,
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    # The serving pods' CPU and memory (half the requests when the gate's Triton shares the pod);
    # the GPUs go to the gate's Triton, the one that uses them.
    resources = container_resources(spec, with_gpus=False)
    if resources and needs_triton(spec):
        resources = split_requests(resources, spec.serving.gpu_resource_name)
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # it talks to the stores, never to the Kubernetes API
        "enableServiceLinks": False,
        "restartPolicy": "Never",
        "securityContext": _pod_security(),
        "terminationGracePeriodSeconds": 10,
        "containers": [container],
        **scheduling(spec),
    }
    used = {VOLUME_REPOSITORY, VOLUME_TMP, VOLUME_SOURCE}
    if needs_triton(spec):
        pod["initContainers"] = [_gate_container(spec, images, serving_image)]
        used.add(VOLUME_SHM)  # Triton's python backend passes tensors through /dev/shm
    pod["volumes"] = [*(v for v in _volumes(spec, images) if v["name"] in used), *store_volumes(store, read_only=False)]
    return pod


def build_build_job(
    md_name: str,
    namespace: str,
    owner_uid: str,
    spec: ModelDeploymentSpec,
    revision: str,
    images: Images,
    store: ArtifactStoreRef,
    key_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """batch/v1 Job `<name>-build-<revision>`, owned by the ModelDeployment.

    The Job carries the name and revision labels (its events queue a pass for the model); its pod
    deliberately carries neither: Services and the PDB select serving pods by the name label, and
    a build pod must never receive traffic or count as a serving pod of the revision. The pod's
    labels (labels.build_pod_labels: the component and `modeldeploy.io/build-of: <name>`) are what
    the `<name>-build` NetworkPolicy selects (resources/networkpolicy.py). `key_labels`: the
    artifact key the operator computed, on the Job only (planning/reuse.key_labels), so that another
    ModelDeployment of the same key waits for this build instead of starting its own.
    """
    job_labels = {**labels.common_labels(md_name), c.LABEL_REVISION: revision, c.LABEL_APP_COMPONENT: COMPONENT,
                  **(key_labels or {})}
    pod_labels = labels.build_pod_labels(md_name)
    meta = labels.object_meta(job_name(md_name, revision), namespace, md_name, owner_uid, job_labels)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": ACTIVE_DEADLINE_S,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            "podFailurePolicy": {"rules": [
                # a checksum, format, conversion or gate failure, or invalid input: the same every time
                {"action": "FailJob",
                 "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": list(DETERMINISTIC_EXITS)}},
                # a pod evicted by a node drain or preemption is not a failure of the build: replaced
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": {
                "metadata": {"labels": dict(sorted(pod_labels.items()))},
                "spec": _pod_spec(namespace, spec, images, store),
            },
        },
    }
