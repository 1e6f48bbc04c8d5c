"""The Deployment of one revision: a model-loader init container and Triton (pure).

The loader fetches, verifies, converts and quantizes the model and writes a Triton model
repository into an emptyDir; Triton then serves it with --model-control-mode=none, so a pod is
ready only once its model is loaded. What the loader receives is the contract in
docs/loader-contract.md (environment variables, so the loader image needs no argument parsing
shared with the operator).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .. import constants as c
from ..api import ModelDeploymentSpec
from ..config import DEFAULT_MAX_DOWNLOAD_BYTES
from . import labels
from .artifact_store import ArtifactStoreRef, store_env, store_mounts, store_volumes

# Keys of spec.model.source.credentialsSecret handed to the loader (each optional in the Secret).
CREDENTIAL_KEYS: Final = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
)
UID: Final = 1000
PRESTOP_SLEEP_S: Final = 10  # time for endpoint removal to reach every proxy before Triton stops
TRITON_EXIT_TIMEOUT_S: Final = 30  # in-flight requests Triton finishes on SIGTERM
# Every second: a pod whose model is cached or fetched in a second is Ready a second after Triton
# is, not on the next 10 s tick (scale-ups and canaries wait on it). One local HTTP GET a second.
STARTUP_PROBE_PERIOD_S: Final = 1
LOAD_DEADLINE_S: Final = 600  # added to startupTimeoutSeconds for the loader's fetch/convert
REVISION_HISTORY_LIMIT: Final = 2
VOLUME_REPOSITORY: Final = "model-repository"
VOLUME_TMP: Final = "tmp"
VOLUME_SHM: Final = "dshm"
VOLUME_SOURCE: Final = "model-source"
HEALTH_READY: Final = "/v2/health/ready"
HEALTH_LIVE: Final = "/v2/health/live"


@dataclass(frozen=True)
class Images:
    """Images from the operator's settings; spec.serving.image / loaderImage override them.

    `serving_backend` names the ONNX backend the serving image provides (python-onnx for the CPU
    image, onnxruntime for NVIDIA's), so the loader writes a config.pbtxt that image can run.
    """

    serving: str
    loader: str
    converter: str
    pull_policy: str = "IfNotPresent"
    serving_backend: str = ""
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES  # the operator's loader download limit


def pod_images(spec: ModelDeploymentSpec, images: Images) -> tuple[str, str]:
    """(Triton image, loader image): the converter image only when the format needs torch."""
    serving = spec.serving.image or images.serving
    if spec.serving.loader_image:
        return serving, spec.serving.loader_image
    return serving, images.converter if spec.model.needs_conversion else images.loader


def image_inputs(spec: ModelDeploymentSpec, images: Images) -> tuple[str, ...]:
    """What the pod template takes from the operator's settings: pass as api.revision_hash(images=...)."""
    return (*pod_images(spec, images), images.serving_backend)


def _container_security() -> dict[str, Any]:
    # Pod Security "restricted" per container; the pod sets user, group and seccomp.
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def loader_env(spec: ModelDeploymentSpec, images: Images) -> list[dict[str, Any]]:
    """The loader's inputs (docs/loader-contract.md); secrets by reference only, never by value."""
    model, serving = spec.model, spec.serving
    env: list[dict[str, Any]] = [
        {"name": "MD_SOURCE_URI", "value": model.source.uri},
        {"name": "MD_FORMAT", "value": model.format},
        {"name": "MD_MODEL_NAME", "value": model.name},
        {"name": "MD_MODEL_VERSION", "value": model.version},
        {"name": "MD_MAX_BATCH_SIZE", "value": str(model.max_batch_size)},
        {"name": "MD_QUANTIZE", "value": model.optimization.quantize},
        {"name": "MD_MIN_AGREEMENT", "value": repr(model.optimization.min_agreement)},
        {"name": "MD_WARMUP", "value": "true" if model.optimization.warmup else "false"},
        {"name": "MD_GPUS", "value": str(serving.gpus)},
        {"name": "MD_INSTANCES_PER_GPU", "value": str(serving.instances_per_gpu)},
        {"name": "MD_REPOSITORY", "value": c.MODEL_REPOSITORY_PATH},
        {"name": "MD_MAX_DOWNLOAD_BYTES", "value": str(max_download_bytes(spec, images))},
    ]
    if model.source.sha256:
        env.append({"name": "MD_SHA256", "value": model.source.sha256})
    if model.dynamic_batching is not None:
        batching = {
            "maxQueueDelayMicroseconds": model.dynamic_batching.max_queue_delay_microseconds,
            "preferredBatchSizes": list(model.dynamic_batching.preferred_batch_sizes),
        }
        env.append({"name": "MD_DYNAMIC_BATCHING", "value": json.dumps(batching, sort_keys=True)})
    if model.inputs:
        shapes = [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in model.inputs]
        env.append({"name": "MD_INPUT_SHAPES", "value": json.dumps(shapes, separators=(",", ":"))})
    if model.validation_data_uri:
        env.append({"name": "MD_VALIDATION_URI", "value": model.validation_data_uri})
    if images.serving_backend:
        env.append({"name": "MD_BACKEND", "value": images.serving_backend})
    if model.source.pvc_claim:
        env.append({"name": "MD_SOURCE_MOUNT", "value": c.SOURCE_MOUNT_PATH})
    env += [{"name": "HOME", "value": "/tmp"}, {"name": "TMPDIR", "value": "/tmp"}]
    if model.source.credentials_secret:
        env += [
            {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": model.source.credentials_secret, "key": key, "optional": True}},
            }
            for key in CREDENTIAL_KEYS
        ]
    return env


def _quantities(values: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    return dict(sorted({**values, **extra}.items()))


def container_resources(spec: ModelDeploymentSpec, *, with_gpus: bool) -> dict[str, Any]:
    """User requests/limits plus, for Triton, the GPUs (requests = limits: extended resources)."""
    serving = spec.serving
    gpus = {serving.gpu_resource_name: str(serving.gpus)} if with_gpus and serving.gpus > 0 else {}
    out: dict[str, Any] = {}
    if requests := _quantities(serving.resources.requests, gpus):
        out["requests"] = requests
    if limits := _quantities(serving.resources.limits, gpus):
        out["limits"] = limits
    return out


def _http_probe(path: str, period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": c.PORT_NAME_HTTP, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


# Triton's request latency summaries (nv_inference_request_summary_us{quantile=...}, experimental
# since 23.04, in both the CPU image's 2.51 and the GPU image's 26.10): the canary is judged on
# their p99 (rollout/analysis.py). Quantile:allowed rank error pairs; 0.99 is what the operator reads.
METRICS_CONFIG: Final = (
    "summary_latencies=true",
    "summary_quantiles=0.5:0.05,0.9:0.01,0.95:0.001,0.99:0.001",
)


def triton_args(*, auto_complete: bool = False) -> list[str]:
    """Triton's flags: fixed model set, strict readiness, no cloud-provider front ends, latency
    summaries (p99) besides the default latency counters. The loader writes a complete config.pbtxt
    (inputs and outputs from the ONNX graph), so Triton's auto-complete is off: for the python
    backend it starts a second stub process only to ask the model for its config, 1.2 s of every
    pod's start on the CPU image (docs/benchmarks.md). `auto_complete`: a user's python model,
    whose config may come from its own auto_complete_config."""
    return [
        *(() if auto_complete else ("--disable-auto-complete-config",)),
        f"--model-repository={c.MODEL_REPOSITORY_PATH}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--allow-sagemaker=false",
        "--allow-vertex-ai=false",
        "--exit-on-error=true",
        f"--http-port={c.PORT_HTTP}",
        f"--grpc-port={c.PORT_GRPC}",
        f"--metrics-port={c.PORT_METRICS}",
        f"--exit-timeout-secs={TRITON_EXIT_TIMEOUT_S}",
        *(f"--metrics-config={setting}" for setting in METRICS_CONFIG),
    ]


# Triton's APIs that no client of a model needs, refused on HTTP (--http-restricted-api, 403) and
# gRPC (--grpc-restricted-protocol, UNAVAILABLE) unless a request carries ADMIN_HEADER with a key
# that is random per container start and never leaves the container (no client, Secret or
# operator has it). Health, metadata, model-config (the validation Job reads it) and inference
# stay open. docs/security.md.
#  - shared-memory: register/unregister/status of system and CUDA shared memory; registering the
#    python backend's own region is a step of the 2025 RCE chain (CVE-2025-23319/23320/23334);
#  - trace: trace settings (a trace file path, rates); logging: log settings (verbosity, log file);
#  - model-repository: index, load, unload (a pod serves the fixed model set the loader wrote);
#  - statistics: per-model counts and timings (the operator reads the :8002 metrics instead).
RESTRICTED_APIS: Final = ("shared-memory", "trace", "model-repository", "logging", "statistics")
ADMIN_HEADER: Final = "x-modeldeploy-admin"
HTTP_MAX_INPUT_BYTES: Final = 64 * 1024 * 1024  # largest HTTP request body (decompressed), where settable
# Flags only some Triton releases have, each passed when `tritonserver --help` names it (~0.1 s at
# start), so one pod template serves the CPU image's 2.51 (which has neither) and NVIDIA's images:
#  --http-max-input-size: 2.59 (25.07) onward; --allow-client-shm: 2.68 (26.04) onward, false by default.
OPTIONAL_ARGS: Final = (
    ("--http-max-input-size", f"--http-max-input-size={HTTP_MAX_INPUT_BYTES}"),
    ("--allow-client-shm", "--allow-client-shm=false"),
)


def _triton_script() -> str:
    restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}=$key"
    probes = "".join(f'case "$help" in *{flag}*) set -- "$@" {arg};; esac; ' for flag, arg in OPTIONAL_ARGS)
    return ('key=$(cat /proc/sys/kernel/random/uuid); help=$(tritonserver --help 2>&1); ' + probes
            + f'exec tritonserver "$@" --http-restricted-api="{restricted}" --grpc-restricted-protocol="{restricted}"')


# The shell makes the key and adds the optional flags, then execs tritonserver with the args.
TRITON_COMMAND: Final = ("/bin/sh", "-c", _triton_script(), "tritonserver")


def triton_mounts() -> list[dict[str, Any]]:
    """Where Triton reads the model (read-only), its scratch and shared memory: serving pods and
    the build Job's gate Triton alike."""
    return [
        {"name": VOLUME_REPOSITORY, "mountPath": c.MODEL_REPOSITORY_PATH, "readOnly": True},
        {"name": VOLUME_TMP, "mountPath": "/tmp"},
        {"name": VOLUME_SHM, "mountPath": "/dev/shm"},
    ]


def loader_mounts(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """The loader's repository and scratch, and a pvc:// source read-only: the init container and
    the build Job alike."""
    mounts: list[dict[str, Any]] = [
        {"name": VOLUME_REPOSITORY, "mountPath": c.MODEL_REPOSITORY_PATH},
        {"name": VOLUME_TMP, "mountPath": "/tmp"},
    ]
    if spec.model.source.pvc_claim:
        mounts.append({"name": VOLUME_SOURCE, "mountPath": c.SOURCE_MOUNT_PATH, "readOnly": True})
    return mounts


def _loader_container(spec: ModelDeploymentSpec, images: Images, image: str) -> dict[str, Any]:
    mounts = loader_mounts(spec)
    container: dict[str, Any] = {
        "name": c.CONTAINER_LOADER,
        "image": image,
        "imagePullPolicy": images.pull_policy,
        "command": ["python", "-m", "modeldeploy.loader"],
        "env": loader_env(spec, images),
        "volumeMounts": mounts,
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    # Same CPU/memory as Triton: an init container's request then never raises the pod's.
    if resources := container_resources(spec, with_gpus=False):
        container["resources"] = resources
    return container


FETCH_COMMAND: Final = ("python", "-m", "modeldeploy.artifact", "fetch")
CACHE_URL_ENV: Final = "MD_ARTIFACT_CACHE_URL"  # modeldeploy.artifact.options.CACHE_ENV (the CLI's contract)


@dataclass(frozen=True)
class ArtifactFetch:
    """A built revision's artifact: serving pods fetch it by key instead of running the loader.

    `cache_url`: the node cache agent (the chart's artifactCache), tried first for every file; the
    fetch verifies what it sends like a store download and falls back to the store on any failure.
    """

    key: str
    store: ArtifactStoreRef
    cache_url: str = ""


def fetch_image(spec: ModelDeploymentSpec, images: Images) -> str:
    """The fetch needs no torch: the loader image (or spec.serving.loaderImage), never the converter."""
    return spec.serving.loader_image or images.loader


def fetch_env(spec: ModelDeploymentSpec, images: Images, store: ArtifactStoreRef,
              cache_url: str = "") -> list[dict[str, Any]]:
    """The fetch's inputs (docs/artifacts.md): the store by reference, the node cache agent when
    there is one, the model name, the repository. No source credentials: a serving pod never sees
    the model's credentialsSecret."""
    cache = [{"name": CACHE_URL_ENV, "value": cache_url}] if cache_url else []
    return [
        *store_env(store),
        *cache,
        {"name": "MD_MODEL_NAME", "value": spec.model.name},
        {"name": "MD_REPOSITORY", "value": c.MODEL_REPOSITORY_PATH},
        {"name": "MD_MAX_DOWNLOAD_BYTES", "value": str(max_download_bytes(spec, images))},
        {"name": "HOME", "value": "/tmp"},
        {"name": "TMPDIR", "value": "/tmp"},
    ]


def _fetch_container(spec: ModelDeploymentSpec, images: Images, artifact: ArtifactFetch) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": c.CONTAINER_LOADER,
        "image": fetch_image(spec, images),
        "imagePullPolicy": images.pull_policy,
        "command": [*FETCH_COMMAND, "--key", artifact.key],
        "env": fetch_env(spec, images, artifact.store, artifact.cache_url),
        "volumeMounts": [
            {"name": VOLUME_REPOSITORY, "mountPath": c.MODEL_REPOSITORY_PATH},
            {"name": VOLUME_TMP, "mountPath": "/tmp"},
            *store_mounts(artifact.store, read_only=True),
        ],
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources := container_resources(spec, with_gpus=False):
        container["resources"] = resources
    return container


def _triton_container(spec: ModelDeploymentSpec, images: Images, image: str) -> dict[str, Any]:
    startup_failures = max(1, math.ceil(spec.serving.startup_timeout_seconds / STARTUP_PROBE_PERIOD_S))
    container: dict[str, Any] = {
        "name": c.CONTAINER_SERVING,
        "image": image,
        "imagePullPolicy": images.pull_policy,
        "command": list(TRITON_COMMAND),
        "args": triton_args(auto_complete=spec.model.format == "python"),
        "ports": [
            {"name": c.PORT_NAME_HTTP, "containerPort": c.PORT_HTTP, "protocol": "TCP"},
            {"name": c.PORT_NAME_GRPC, "containerPort": c.PORT_GRPC, "protocol": "TCP"},
            {"name": c.PORT_NAME_METRICS, "containerPort": c.PORT_METRICS, "protocol": "TCP"},
        ],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "startupProbe": _http_probe(HEALTH_READY, STARTUP_PROBE_PERIOD_S, 5, startup_failures),
        "readinessProbe": _http_probe(HEALTH_READY, 5, 3, 3),
        "livenessProbe": _http_probe(HEALTH_LIVE, 10, 5, 3),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}},
        "volumeMounts": triton_mounts(),
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources := container_resources(spec, with_gpus=True):
        container["resources"] = resources
    return container


def max_download_bytes(spec: ModelDeploymentSpec, images: Images) -> int:
    """The loader's download limit: the operator's, lowered (never raised) by spec.model.source.maxBytes."""
    if spec.model.source.max_bytes is None:
        return images.max_download_bytes
    return min(spec.model.source.max_bytes, images.max_download_bytes)


# What the loader may write to the model repository at once, for a download limit L: the download
# (<= L), one derived copy (converted ONNX, or an unpacked archive, also <= L), the staged model
# (<= L) and, when the init container runs again in the same pod, the model committed before (<= L);
# plus 1 GiB of scratch (int8 calibration files, config). The kubelet evicts the pod past it.
REPOSITORY_COPIES: Final = 4
REPOSITORY_SCRATCH_BYTES: Final = 2**30


def quantity(n: int) -> str:
    """Bytes as a Kubernetes quantity: the largest binary suffix that divides them exactly."""
    for suffix, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def repository_size_limit(download_limit: int) -> str:
    """sizeLimit of the model-repository emptyDir (REPOSITORY_COPIES x limit + scratch)."""
    return quantity(REPOSITORY_COPIES * download_limit + REPOSITORY_SCRATCH_BYTES)


def _volumes(spec: ModelDeploymentSpec, images: Images, *, source: bool = True) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": VOLUME_REPOSITORY, "emptyDir": {"sizeLimit": repository_size_limit(max_download_bytes(spec, images))}},
        {"name": VOLUME_TMP, "emptyDir": {"sizeLimit": "1Gi"}},
        # Triton's python backend passes tensors through /dev/shm; the runtime's default is 64 MiB.
        {"name": VOLUME_SHM, "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
    ]
    if source and (claim := spec.model.source.pvc_claim):
        volumes.append({"name": VOLUME_SOURCE, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    return volumes


def scheduling(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """Where the model's pods may run (node selector, tolerations, priority class): serving pods
    and the build Job alike, so the build's gates run on the serving device."""
    serving, out = spec.serving, {}
    if serving.node_selector:
        out["nodeSelector"] = dict(serving.node_selector)
    if serving.tolerations:
        out["tolerations"] = [t.to_manifest() for t in serving.tolerations]
    if serving.priority_class_name:
        out["priorityClassName"] = serving.priority_class_name
    return out


def _pod_spec(md_name: str, spec: ModelDeploymentSpec, images: Images,
              artifact: ArtifactFetch | None = None) -> dict[str, Any]:
    serving_image, loader_image = pod_images(spec, images)
    init = _fetch_container(spec, images, artifact) if artifact else _loader_container(spec, images, loader_image)
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # neither container talks to the Kubernetes API
        "enableServiceLinks": False,
        "securityContext": _pod_security(),
        "terminationGracePeriodSeconds": PRESTOP_SLEEP_S + TRITON_EXIT_TIMEOUT_S + 5,
        "initContainers": [init],
        "containers": [_triton_container(spec, images, serving_image)],
        "volumes": [*_volumes(spec, images, source=artifact is None),
                    *(store_volumes(artifact.store, read_only=True) if artifact else [])],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": labels.selector_labels(md_name)},
            }
        ],
    }
    pod.update(scheduling(spec))
    return pod


def _strategy(gpus: int) -> dict[str, Any]:
    # With GPUs a surge pod would wait for a GPU nobody has spare: replace in place instead.
    if gpus > 0:
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}


def build_deployment(
    md_name: str,
    namespace: str,
    owner_uid: str,
    spec: ModelDeploymentSpec,
    revision: str,
    replicas: int,
    images: Images,
    role: str,
    artifact: ArtifactFetch | None = None,
) -> dict[str, Any]:
    """apps/v1 Deployment `<name>-<revision>` with `replicas` pods; `role` is stable or canary.

    The role goes on the Deployment's labels only: the pod template of a revision never changes
    when it is promoted, so promotion restarts nothing. With `artifact` (a built revision), the
    init container only fetches and verifies the artifact; without it, it runs the whole loader.
    """
    pod_labels = labels.pod_labels(md_name, revision, spec.model.version)
    meta_labels = {**pod_labels, c.LABEL_ROLE: role}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": labels.object_meta(
            labels.deployment_name(md_name, revision), namespace, md_name, owner_uid, meta_labels
        ),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": REVISION_HISTORY_LIMIT,
            "progressDeadlineSeconds": spec.serving.startup_timeout_seconds + LOAD_DEADLINE_S,
            "selector": {"matchLabels": labels.revision_selector(md_name, revision)},
            "strategy": _strategy(spec.serving.gpus),
            "template": {
                "metadata": {
                    "labels": dict(sorted(pod_labels.items())),
                    "annotations": {"kubectl.kubernetes.io/default-container": c.CONTAINER_SERVING},
                },
                "spec": _pod_spec(md_name, spec, images, artifact),
            },
        },
    }
