"""The operator's settings: one object, read from environment variables and CLI flags.

Environment variables (MD_*) are what the Helm chart sets; flags override them for local runs.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

METRICS_SOURCES = ("scrape", "prometheus")
# The store the operator's build Jobs and serving pods use: an S3 bucket, or a PersistentVolumeClaim
# of that name in each model namespace (pvc://CLAIM, mounted into the pods as a directory store).
ARTIFACT_STORE_SCHEMES = ("s3://", "pvc://")
_PVC_STORE = re.compile(r"pvc://[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
# Most bytes a model-loader fetches for one model (the loader's MD_MAX_DOWNLOAD_BYTES, which has
# the same default); spec.model.source.maxBytes can only lower it. docs/loader-contract.md.
DEFAULT_MAX_DOWNLOAD_BYTES = 10 * 2**30
_BYTES = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
_UNITS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
          "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}


def parse_bytes(name: str, text: str) -> int:
    """A byte count written as an integer or a Kubernetes quantity without fractions: 10Gi, 500M."""
    m = _BYTES.match(text.strip())
    if not m:
        raise ValueError(f"{name} must be a number of bytes such as 10737418240 or 10Gi, not {text!r}")
    value = int(m.group(1)) * _UNITS[m.group(2)]
    if value < 1:
        raise ValueError(f"{name} must be at least 1 byte")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything configurable about the operator process."""

    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    serving_image: str = "localhost/modeldeploy-triton-cpu:dev"
    loader_image: str = "localhost/modeldeploy-operator:dev"  # our code; never the serving image
    converter_image: str = "localhost/modeldeploy-converter:dev"
    serving_backend: str = "python-onnx"  # python-onnx (CPU image) | onnxruntime (NVIDIA image)
    resync_seconds: float = 10.0  # timed passes for models not yet settled (startup timeouts, Degraded)
    relist_seconds: float = 600.0  # the safety net: LIST everything into the cache, a pass for every model
    autoscale_seconds: float = 2.0  # how often serving pods are scraped for autoscaling
    metrics_port: int = 8080  # /metrics and /healthz
    log_format: str = "text"  # text | json
    log_level: str = "INFO"
    image_pull_policy: str = "IfNotPresent"
    extra: Mapping[str, str] = field(default_factory=dict)
    metrics_source: str = "scrape"  # scrape (each pod's :8002) | prometheus (PromQL at prometheus_url)
    prometheus_url: str = ""  # e.g. http://prometheus-operated.monitoring:9090; needed for metrics_source=prometheus
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES  # per model-loader run; sizes its emptyDir
    network_policy: str = ""  # the chart's networkPolicy values as JSON (MD_NETWORK_POLICY); "" = none built
    leader_namespace: str = ""  # where the leader Lease lives; "" = no election (a single replica)
    leader_lease: str = "modeldeploy-leader"
    identity: str = ""  # this replica's name in the Lease (the pod name); "" = hostname and pid
    lease_seconds: float = 12.0  # a leader silent this long is replaced
    renew_seconds: float = 3.0  # how often the leader renews
    # Built revisions (docs/artifacts.md): "" = off, every serving pod runs the whole loader (today's
    # path); s3://BUCKET[/PREFIX] = one build Job per revision, serving pods only fetch.
    artifact_store: str = ""
    artifact_store_secret: str = ""  # a Secret of that name in each model namespace: the store's AWS_* keys
    artifact_store_endpoint: str = ""  # the store's S3 endpoint, when the Secret does not hold AWS_ENDPOINT_URL
    # The node cache agent (chart artifactCache.enabled): serving pods of a built revision fetch
    # through it (MD_ARTIFACT_CACHE_URL of their fetch), falling back to the store. "" = the store only.
    artifact_cache_url: str = ""
    # Scale to zero (docs/design.md, "Scale to zero: the activator"): the activator's Service in
    # `activator_namespace` (the chart's `<release>-activator`); "" = off, minReplicas 0 keeps one pod.
    # Its routes ConfigMap and demand Lease are named after it (`-routes`, `-demand`).
    activator_service: str = ""
    activator_namespace: str = ""

    def __post_init__(self) -> None:
        """Refuse a metrics source that cannot work at startup, not at the first autoscaling tick."""
        if self.metrics_source not in METRICS_SOURCES:
            raise ValueError(f"MD_METRICS_SOURCE must be one of {', '.join(METRICS_SOURCES)}, "
                             f"not {self.metrics_source!r}")
        if self.metrics_source == "prometheus" and not self.prometheus_url:
            raise ValueError("MD_PROMETHEUS_URL must be set when MD_METRICS_SOURCE=prometheus "
                             "(e.g. http://prometheus-operated.monitoring:9090)")
        if self.metrics_source == "prometheus" and not self.prometheus_url.startswith(("http://", "https://")):
            raise ValueError("MD_PROMETHEUS_URL must start with http:// or https://")  # the value may hold a password
        if self.max_download_bytes < 1:
            raise ValueError("MD_MAX_DOWNLOAD_BYTES must be at least 1 byte")
        if self.leader_namespace and not 0 < self.renew_seconds < self.lease_seconds:
            raise ValueError("MD_RENEW_SECONDS must be above 0 and below MD_LEASE_SECONDS")
        if self.artifact_store and not self.artifact_store.startswith(ARTIFACT_STORE_SCHEMES):
            raise ValueError(f"MD_ARTIFACT_STORE must start with {' or '.join(ARTIFACT_STORE_SCHEMES)} "
                             f"(or be empty: no build Jobs), not {self.artifact_store!r}")
        if self.artifact_store.startswith("pvc://") and not _PVC_STORE.fullmatch(self.artifact_store):
            raise ValueError(f"MD_ARTIFACT_STORE pvc://CLAIM names a PersistentVolumeClaim (no path after it), "
                             f"not {self.artifact_store!r}")
        if self.artifact_store_endpoint and not self.artifact_store_endpoint.startswith(("http://", "https://")):
            raise ValueError("MD_ARTIFACT_STORE_ENDPOINT must start with http:// or https://")
        if self.artifact_cache_url and self.artifact_store.startswith("pvc://"):
            raise ValueError("MD_ARTIFACT_CACHE_URL (the node cache agent) needs an s3:// MD_ARTIFACT_STORE: "
                             "pods of a pvc:// store read the claim directly")
        if self.activator_service and not self.activator_namespace:
            raise ValueError("MD_ACTIVATOR_NAMESPACE must be set with MD_ACTIVATOR_SERVICE (the activator's namespace)")
        if self.artifact_cache_url and not self.artifact_cache_url.startswith(("http://", "https://")):
            raise ValueError("MD_ARTIFACT_CACHE_URL must start with http:// or https:// (the node cache agent), "
                             f"not {self.artifact_cache_url!r}")

    @property
    def activator_enabled(self) -> bool:
        """Whether idle models with minReplicas 0 go to zero pods (the activator answers for them)."""
        return bool(self.activator_service)

    @property
    def activator_routes(self) -> str:
        return f"{self.activator_service}-routes"

    @property
    def activator_demand_lease(self) -> str:
        return f"{self.activator_service}-demand"

    @property
    def artifacts_enabled(self) -> bool:
        """Whether revisions are built once by a Job and served pods only fetch (docs/artifacts.md)."""
        return bool(self.artifact_store)

    @property
    def artifact_cache_enabled(self) -> bool:
        """Whether serving pods of a built revision fetch through the node cache agent."""
        return self.artifacts_enabled and bool(self.artifact_cache_url)

    @property
    def cluster_wide(self) -> bool:
        return not self.namespaces


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from MD_* environment variables (defaults for anything unset)."""
    e = os.environ if env is None else env
    d = Settings()
    return Settings(
        namespaces=_split(e.get("MD_WATCH_NAMESPACES", "")),
        serving_image=e.get("MD_SERVING_IMAGE", d.serving_image),
        loader_image=e.get("MD_LOADER_IMAGE") or d.loader_image,
        converter_image=e.get("MD_CONVERTER_IMAGE", d.converter_image),
        serving_backend=e.get("MD_SERVING_BACKEND", d.serving_backend),
        resync_seconds=float(e.get("MD_RESYNC_SECONDS", d.resync_seconds)),
        autoscale_seconds=float(e.get("MD_AUTOSCALE_SECONDS", d.autoscale_seconds)),
        metrics_port=int(e.get("MD_METRICS_PORT", d.metrics_port)),
        log_format=e.get("MD_LOG_FORMAT", d.log_format),
        log_level=e.get("MD_LOG_LEVEL", d.log_level),
        image_pull_policy=e.get("MD_IMAGE_PULL_POLICY", d.image_pull_policy),
        metrics_source=e.get("MD_METRICS_SOURCE", d.metrics_source).strip().lower(),
        prometheus_url=e.get("MD_PROMETHEUS_URL", d.prometheus_url).strip(),
        max_download_bytes=parse_bytes("MD_MAX_DOWNLOAD_BYTES", e["MD_MAX_DOWNLOAD_BYTES"])
        if e.get("MD_MAX_DOWNLOAD_BYTES", "").strip() else d.max_download_bytes,
        network_policy=e.get("MD_NETWORK_POLICY", d.network_policy).strip(),
        relist_seconds=float(e.get("MD_RELIST_SECONDS", d.relist_seconds)),
        leader_namespace=e.get("MD_LEADER_ELECTION_NAMESPACE", d.leader_namespace).strip(),
        leader_lease=e.get("MD_LEADER_LEASE", d.leader_lease).strip() or d.leader_lease,
        identity=e.get("MD_IDENTITY", e.get("POD_NAME", d.identity)).strip(),
        lease_seconds=float(e.get("MD_LEASE_SECONDS", d.lease_seconds)),
        renew_seconds=float(e.get("MD_RENEW_SECONDS", d.renew_seconds)),
        artifact_store=e.get("MD_ARTIFACT_STORE", d.artifact_store).strip(),
        artifact_store_secret=e.get("MD_ARTIFACT_STORE_SECRET", d.artifact_store_secret).strip(),
        artifact_store_endpoint=e.get("MD_ARTIFACT_STORE_ENDPOINT", d.artifact_store_endpoint).strip(),
        artifact_cache_url=e.get("MD_ARTIFACT_CACHE_URL", d.artifact_cache_url).strip(),
        activator_service=e.get("MD_ACTIVATOR_SERVICE", d.activator_service).strip(),
        activator_namespace=e.get("MD_ACTIVATOR_NAMESPACE", d.activator_namespace).strip(),
    )


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of `modeldeploy run`; each overrides its MD_* variable."""
    parser.add_argument("--namespace", "-n", action="append", dest="namespaces", default=None,
                        help="watch only this namespace (repeatable); default: cluster-wide")
    parser.add_argument("--serving-image", help="default Triton image for serving pods")
    parser.add_argument("--loader-image", help="image of the model-loader init container")
    parser.add_argument("--resync-seconds", type=float, help="drift-healing timer interval")
    parser.add_argument("--metrics-port", type=int, help="port of /metrics and /healthz")
    parser.add_argument("--log-format", choices=["text", "json"], help="log output format")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Environment settings overridden by whichever flags were given."""
    base = from_env(env)
    overrides = {
        "namespaces": tuple(args.namespaces) if args.namespaces else None,
        "serving_image": args.serving_image,
        "loader_image": args.loader_image,
        "resync_seconds": args.resync_seconds,
        "metrics_port": args.metrics_port,
        "log_format": args.log_format,
        "log_level": args.log_level,
    }
    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**{**base.__dict__, **values})
