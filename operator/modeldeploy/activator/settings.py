"""The activator's settings: MD_ACTIVATOR_* environment variables (what the chart sets), each with a flag."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .hold import HoldSettings

DEFAULT_HTTP_PORT: Final = 8000
DEFAULT_GRPC_PORT: Final = 8001
DEFAULT_ADMIN_PORT: Final = 9090
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

OPTIONS: Final[dict[str, tuple[str, str, str]]] = {
    # flag: (environment variable, default, help)
    "address": ("MD_ACTIVATOR_ADDRESS", "0.0.0.0", "address to listen on (:: for IPv6)"),
    "http-port": ("MD_ACTIVATOR_HTTP_PORT", str(DEFAULT_HTTP_PORT), "KServe v2 over HTTP"),
    "grpc-port": ("MD_ACTIVATOR_GRPC_PORT", str(DEFAULT_GRPC_PORT), "KServe v2 over gRPC"),
    "admin-port": ("MD_ACTIVATOR_ADMIN_PORT", str(DEFAULT_ADMIN_PORT), "/metrics, /healthz, /readyz"),
    "max-held": ("MD_ACTIVATOR_MAX_HELD", "1000", "requests held per model at most; more get 429"),
    "hold-timeout": ("MD_ACTIVATOR_HOLD_TIMEOUT_SECONDS", "120", "a request not forwarded by then gets 503"),
    "retry-after": ("MD_ACTIVATOR_RETRY_AFTER_SECONDS", "2", "Retry-After of 429 and 503 answers"),
    "probe-interval": ("MD_ACTIVATOR_PROBE_INTERVAL_SECONDS", "0.1",
                       "how often a held model's pods are asked whether they are ready"),
    "forward-timeout": ("MD_ACTIVATOR_FORWARD_TIMEOUT_SECONDS", "300", "most time one forwarded request takes"),
    "grpc-max-connection-age": ("MD_ACTIVATOR_GRPC_MAX_CONNECTION_AGE_SECONDS", "10",
                                "gRPC connections are sent GOAWAY after this, so clients reconnect "
                                "(to the pods once the Service points at them again)"),
    "max-body-bytes": ("MD_ACTIVATOR_MAX_BODY_BYTES", str(256 * 2**20), "largest HTTP request body held"),
    "max-held-bytes": ("MD_ACTIVATOR_MAX_HELD_BYTES", str(2**30), "HTTP request bodies in memory at once, all "
                       "models; past it requests get 429"),
    "demand-renew": ("MD_ACTIVATOR_DEMAND_RENEW_SECONDS", "5", "demand is written again at most this often"),
    "namespace": ("MD_ACTIVATOR_NAMESPACE", "", "namespace of the demand Lease and routes ConfigMap"),
    "demand-lease": ("MD_ACTIVATOR_DEMAND_LEASE", "", "name of the demand Lease (empty: no demand written)"),
    "routes-configmap": ("MD_ACTIVATOR_ROUTES_CONFIGMAP", "", "name of the routes ConfigMap to watch"),
    "routes-file": ("MD_ACTIVATOR_ROUTES_FILE", "", "or a routes file to poll (tests; a mounted ConfigMap)"),
    "identity": ("MD_ACTIVATOR_IDENTITY", "", "this replica's name in the demand Lease (the pod name)"),
    "kubeconfig": ("MD_ACTIVATOR_KUBECONFIG", "", "kubeconfig (empty: in-cluster credentials)"),
    "drain": ("MD_ACTIVATOR_DRAIN_SECONDS", "20", "on SIGTERM, how long held requests may still finish"),
    "unready": ("MD_ACTIVATOR_UNREADY_SECONDS", "3", "on SIGTERM, how long new requests are still taken "
                "(not ready) while endpoints drop this replica"),
    "log-level": ("MD_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
}


class SettingsError(ValueError):
    """A setting is invalid (exit code 2)."""


@dataclass(frozen=True)
class ActivatorSettings:
    hold: HoldSettings
    address: str = "0.0.0.0"
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    admin_port: int = DEFAULT_ADMIN_PORT
    forward_timeout_s: float = 300.0
    grpc_max_connection_age_s: float = 10.0
    max_body_bytes: int = 256 * 2**20
    max_held_bytes: int = 2**30
    demand_renew_s: float = 5.0
    namespace: str = ""
    demand_lease: str = ""
    routes_configmap: str = ""
    routes_file: Path | None = None
    identity: str = ""
    kubeconfig: str = ""
    drain_s: float = 20.0
    unready_s: float = 3.0
    log_level: str = "INFO"


def _num(name: str, raw: str, lo: float, hi: float, integer: bool = False) -> float:
    try:
        v = int(raw) if integer else float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not lo <= v <= hi:
        raise SettingsError(f"{name} must be between {lo:g} and {hi:g}, got {raw!r}")
    return v


def activator_settings(argv: Sequence[str], env: Mapping[str, str]) -> ActivatorSettings:
    """Settings from flags and environment (a flag wins); SettingsError naming the variable."""
    p = argparse.ArgumentParser(prog="python -m modeldeploy.activator",
                                description="Hold requests for models at zero until a pod is Ready.")
    for flag, (var, default, text) in OPTIONS.items():
        p.add_argument(f"--{flag}", dest=flag.replace("-", "_"), help=f"{text} (${var}, default {default!r})")
    ns = vars(p.parse_args(list(argv)))
    raw = {f: ns[f.replace("-", "_")] if ns[f.replace("-", "_")] is not None else env.get(var, default)
           for f, (var, default, _) in OPTIONS.items()}

    def var(flag: str) -> str:
        return OPTIONS[flag][0]

    ports = {f: int(_num(var(f), raw[f], 0, 65535, integer=True)) for f in ("http-port", "grpc-port", "admin-port")}
    level = raw["log-level"].upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"MD_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {raw['log-level']!r}")
    if (raw["demand-lease"] or raw["routes-configmap"]) and not raw["namespace"]:
        raise SettingsError("MD_ACTIVATOR_NAMESPACE is required with a demand Lease or a routes ConfigMap")
    if not raw["routes-configmap"] and not raw["routes-file"]:
        raise SettingsError("MD_ACTIVATOR_ROUTES_CONFIGMAP or MD_ACTIVATOR_ROUTES_FILE is required")
    hold = HoldSettings(
        max_held=int(_num(var("max-held"), raw["max-held"], 1, 1_000_000, integer=True)),
        timeout_s=_num(var("hold-timeout"), raw["hold-timeout"], 0.1, 3600),
        probe_interval_s=_num(var("probe-interval"), raw["probe-interval"], 0.01, 60),
        retry_after_s=int(_num(var("retry-after"), raw["retry-after"], 1, 3600, integer=True)),
    )
    return ActivatorSettings(
        hold=hold, address=raw["address"], http_port=ports["http-port"], grpc_port=ports["grpc-port"],
        admin_port=ports["admin-port"],
        forward_timeout_s=_num(var("forward-timeout"), raw["forward-timeout"], 0.1, 86400),
        grpc_max_connection_age_s=_num(var("grpc-max-connection-age"), raw["grpc-max-connection-age"], 1, 86400),
        max_body_bytes=int(_num(var("max-body-bytes"), raw["max-body-bytes"], 1024, 2**31 - 1, integer=True)),
        max_held_bytes=int(_num(var("max-held-bytes"), raw["max-held-bytes"], 1024, 2**40, integer=True)),
        demand_renew_s=_num(var("demand-renew"), raw["demand-renew"], 0.1, 3600),
        namespace=raw["namespace"], demand_lease=raw["demand-lease"], routes_configmap=raw["routes-configmap"],
        routes_file=Path(raw["routes-file"]) if raw["routes-file"] else None, identity=raw["identity"],
        kubeconfig=raw["kubeconfig"], drain_s=_num(var("drain"), raw["drain"], 0, 3600),
        unready_s=_num(var("unready"), raw["unready"], 0, 600), log_level=level,
    )
