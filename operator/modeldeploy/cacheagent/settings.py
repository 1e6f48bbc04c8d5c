"""The agent's settings: MD_* environment variables (what the chart sets), each with a flag.

The store is configured exactly as for `python -m modeldeploy.artifact fetch`: MD_ARTIFACT_STORE
and the store's own MD_STORE_AWS_* credentials, which only the store client reads (never logged).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..artifact.errors import StoreConfigError
from ..artifact.options import parser, positive_float, positive_int, resolve
from ..artifact.store import STORE_ENV
from ..config import parse_bytes
from ..loader.errors import ConfigError

DEFAULT_DIR: Final = "/var/lib/modeldeploy/artifacts"
DEFAULT_MAX_BYTES: Final = 50 * 2**30
DEFAULT_PORT: Final = 8090
# Below the fetch side's 10 s timeout for the agent (artifact/fetch.py): a pod that asked for an
# artifact being filled gets an answer, and reads the store itself, before it would give up on us.
DEFAULT_FILL_WAIT_SECONDS: Final = 8.0

OPTIONS: Final[dict[str, tuple[str, str]]] = {
    "store": (STORE_ENV, "s3://BUCKET[/PREFIX] or file:///PATH of the artifact store"),
    "dir": ("MD_CACHE_DIR", f"the cache directory, a hostPath on the node (default {DEFAULT_DIR})"),
    "max-bytes": ("MD_CACHE_MAX_BYTES", "most bytes of artifact files kept, e.g. 50Gi (default 50Gi)"),
    "address": ("MD_CACHE_ADDRESS", "address to listen on (default 0.0.0.0; :: for IPv6)"),
    "port": ("MD_CACHE_PORT", f"port of the artifacts, /metrics and /healthz (default {DEFAULT_PORT})"),
    "fill-wait": ("MD_CACHE_FILL_WAIT_SECONDS", "how long a request waits for a fill before the pod is sent "
                  f"to the store (default {DEFAULT_FILL_WAIT_SECONDS:g})"),
    "fetch-attempts": ("MD_FETCH_ATTEMPTS", "tries per store request on transient errors (default 5)"),
    "fetch-timeout": ("MD_FETCH_TIMEOUT_SECONDS", "socket timeout per store request (default 60)"),
    "log-level": ("MD_LOG_LEVEL", "DEBUG, INFO (default), WARNING or ERROR"),
}
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class AgentSettings:
    """Everything the agent is told."""

    store: str
    directory: Path = Path(DEFAULT_DIR)
    max_bytes: int = DEFAULT_MAX_BYTES
    address: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    fill_wait_s: float = DEFAULT_FILL_WAIT_SECONDS
    attempts: int = 5
    timeout_s: float = 60.0
    log_level: str = "INFO"


def agent_settings(argv: Sequence[str], env: Mapping[str, str]) -> AgentSettings:
    """AgentSettings from flags and environment (a flag wins); ConfigError or StoreConfigError."""
    ns = parser("python -m modeldeploy.cacheagent", OPTIONS).parse_args(list(argv))
    raw = resolve(ns, OPTIONS, env)
    if not raw["store"]:
        raise StoreConfigError(f"{STORE_ENV} is required")
    try:
        max_bytes = parse_bytes("MD_CACHE_MAX_BYTES", raw["max-bytes"]) if raw["max-bytes"] else DEFAULT_MAX_BYTES
    except ValueError as e:
        raise ConfigError(str(e)) from None
    port = positive_int("MD_CACHE_PORT", raw["port"], DEFAULT_PORT)
    if port > 65535:
        raise ConfigError(f"MD_CACHE_PORT must be at most 65535, got {port}")
    level = (raw["log-level"] or "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"MD_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {raw['log-level']!r}")
    directory = Path(raw["dir"] or DEFAULT_DIR)
    if not directory.is_absolute():
        raise ConfigError(f"MD_CACHE_DIR must be an absolute path, got {str(directory)!r}")
    return AgentSettings(
        store=raw["store"],
        directory=directory,
        max_bytes=max_bytes,
        address=raw["address"] or "0.0.0.0",
        port=port,
        fill_wait_s=positive_float("MD_CACHE_FILL_WAIT_SECONDS", raw["fill-wait"], DEFAULT_FILL_WAIT_SECONDS),
        attempts=positive_int("MD_FETCH_ATTEMPTS", raw["fetch-attempts"], 5),
        timeout_s=positive_float("MD_FETCH_TIMEOUT_SECONDS", raw["fetch-timeout"], 60.0),
        log_level=level,
    )
