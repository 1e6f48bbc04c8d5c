"""Inputs of the artifact commands: flags that mirror MD_* environment variables (a flag wins).

Environment variables, as for the loader (docs/loader-contract.md), so a pod spec needs no
arguments and unknown variables are harmless. A bad input is a ConfigError (exit 2), except a
missing or unusable store, which is the platform's configuration (StoreConfigError, exit 77).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

from ..loader.errors import ConfigError
from ..loader.limits import DEFAULT_MAX_DOWNLOAD_BYTES
from ..loader.settings import LoaderSettings, from_sources
from .errors import StoreConfigError
from .manifest import MODEL_NAME
from .store import STORE_ENV, check_key

CACHE_ENV: Final = "MD_ARTIFACT_CACHE_URL"

# flag -> (environment variable, help)
FETCH_OPTIONS: Final[dict[str, tuple[str, str]]] = {
    "store": (STORE_ENV, "s3://BUCKET[/PREFIX] or file:///PATH of the artifact store"),
    "key": ("MD_ARTIFACT_KEY", "the artifact key to fetch"),
    "model-name": ("MD_MODEL_NAME", "Triton model name (the repository's directory); default: the manifest's"),
    "repository": ("MD_REPOSITORY", "model repository root to write (default /models)"),
    "cache-url": (CACHE_ENV, "the node cache agent's URL (optional)"),
    "termination-log": ("MD_TERMINATION_LOG", "where the JSON result goes (default /dev/termination-log)"),
    "fetch-attempts": ("MD_FETCH_ATTEMPTS", "tries per request on transient errors (default 5)"),
    "fetch-timeout": ("MD_FETCH_TIMEOUT_SECONDS", "socket timeout per request (default 60)"),
    "max-download-bytes": ("MD_MAX_DOWNLOAD_BYTES", "the most bytes an artifact may hold (default 10 GiB)"),
}
BUILD_OPTIONS: Final[dict[str, tuple[str, str]]] = {
    "store": (STORE_ENV, "s3://BUCKET[/PREFIX] or file:///PATH of the artifact store"),
    "key": ("MD_ARTIFACT_KEY", "the key the operator expects (optional; a mismatch is refused)"),
    "scope": ("MD_ARTIFACT_SCOPE", "where a source without sha256 is resolved, e.g. NAMESPACE/SECRET"),
    "device": ("MD_ARTIFACT_DEVICE", "the serving device class the int8 gate measures (e.g. a GPU product)"),
    "hardware": ("MD_ARTIFACT_HARDWARE", "the serving hardware class tuning measures (in the key only with MD_TUNE)"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError, so a bad flag also ends in a termination message."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"invalid arguments: {message}")


def parser(prog: str, options: Mapping[str, tuple[str, str]]) -> argparse.ArgumentParser:
    """A parser with one flag per option; every flag defaults to None (then its variable counts)."""
    p = _Parser(prog=prog)
    for flag, (var, text) in options.items():
        p.add_argument(f"--{flag}", dest=flag.replace("-", "_"), default=None, help=f"{text} [${var}]")
    return p


def resolve(ns: argparse.Namespace, options: Mapping[str, tuple[str, str]], env: Mapping[str, str]) -> dict[str, str]:
    """Each option's value: its flag, else its environment variable, else empty."""
    out = {}
    for flag, (var, _) in options.items():
        value = getattr(ns, flag.replace("-", "_"))
        out[flag] = (value if value is not None else env.get(var, "")).strip()
    return out


def positive_int(name: str, raw: str, default: int) -> int:
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a positive integer, got {raw!r}")
    return int(raw)


def positive_float(name: str, raw: str, default: float) -> float:
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {raw!r}")
    return value


def check_model_name(name: str, what: str) -> str:
    """A Triton model name that is safe as a directory name."""
    if not MODEL_NAME.match(name) or name in (".", ".."):
        raise ConfigError(f"{what} must be 1-200 of [A-Za-z0-9_.-], got {name!r}")
    return name


@dataclass(frozen=True)
class FetchSettings:
    """One fetch: which artifact, from where, into which repository."""

    store: str
    key: str
    model_name: str = ""  # empty: the manifest's
    repository: Path = Path("/models")
    cache_url: str = ""
    attempts: int = 5
    timeout_s: float = 60.0
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES


def fetch_settings(argv: Sequence[str], env: Mapping[str, str]) -> FetchSettings:
    """FetchSettings from flags and environment."""
    ns = parser("python -m modeldeploy.artifact fetch", FETCH_OPTIONS).parse_args(list(argv))
    raw = resolve(ns, FETCH_OPTIONS, env)
    if not raw["store"]:
        raise StoreConfigError(f"{STORE_ENV} is required")
    if not raw["key"]:
        raise ConfigError("MD_ARTIFACT_KEY is required")
    return FetchSettings(
        store=raw["store"],
        key=check_key(raw["key"]),
        model_name=check_model_name(raw["model-name"], "MD_MODEL_NAME") if raw["model-name"] else "",
        repository=Path(raw["repository"] or "/models"),
        cache_url=raw["cache-url"],
        attempts=positive_int("MD_FETCH_ATTEMPTS", raw["fetch-attempts"], 5),
        timeout_s=positive_float("MD_FETCH_TIMEOUT_SECONDS", raw["fetch-timeout"], 60.0),
        max_bytes=positive_int("MD_MAX_DOWNLOAD_BYTES", raw["max-download-bytes"], DEFAULT_MAX_DOWNLOAD_BYTES),
    )


@dataclass(frozen=True)
class BuildOptions:
    """The artifact side of a build; the loader's own settings are a LoaderSettings."""

    store: str
    expected_key: str = ""
    scope: str = ""
    device: str = ""
    hardware: str = ""


def build_options(
    argv: Sequence[str], env: Mapping[str, str], *, need_store: bool = True
) -> tuple[BuildOptions, LoaderSettings]:
    """Artifact flags first; every other flag goes to the loader's parser (which refuses unknown ones)."""
    ns, rest = parser("python -m modeldeploy.artifact build", BUILD_OPTIONS).parse_known_args(list(argv))
    raw = resolve(ns, BUILD_OPTIONS, env)
    settings = from_sources(rest, env)
    if need_store and not raw["store"]:
        raise StoreConfigError(f"{STORE_ENV} is required")
    opts = BuildOptions(store=raw["store"], expected_key=raw["key"], scope=raw["scope"], device=raw["device"],
                        hardware=raw["hardware"])
    return opts, settings
