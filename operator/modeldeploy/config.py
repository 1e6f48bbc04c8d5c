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
    loader_image: str = "localhost/modeldeploy-triton-cpu:dev"
    converter_image: str = "localhost/modeldeploy-converter:dev"
    serving_backend: str = "python-onnx"  # python-onnx (CPU image) | onnxruntime (NVIDIA image)
    resync_seconds: float = 10.0  # drift-healing / status timer
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
        loader_image=e.get("MD_LOADER_IMAGE", e.get("MD_SERVING_IMAGE", d.loader_image)),
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
