"""Typed, validated view of a ModelDeployment spec: parse once, then use plain attributes.

The CRD defaults and validates at admission; this module applies the same defaults and rules
again so the operator is right even for objects the apiserver did not default (an older CRD, a
test fixture), and it adds the checks a schema cannot express. Pure: no kopf, no Kubernetes client.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Final

# ---------------------------------------------------------------- defaults (mirrored in the CRD)

DEFAULT_MODEL_VERSION: Final = "1"
DEFAULT_FORMAT: Final = "onnx"
DEFAULT_MAX_BATCH_SIZE: Final = 8
DEFAULT_MAX_QUEUE_DELAY_US: Final = 100
DEFAULT_QUANTIZE: Final = "none"
DEFAULT_WARMUP: Final = True
DEFAULT_MIN_AGREEMENT: Final = 0.99
DEFAULT_TUNE_OBJECTIVE: Final = "throughput"
DEFAULT_TUNE_BUDGET: Final = "3m"
DEFAULT_TUNE_ON_MISS: Final = "ServeBest"
DEFAULT_TUNE_CONCURRENCY: Final = (1, 8, 32)
DEFAULT_GPUS: Final = 1
DEFAULT_GPU_RESOURCE: Final = "nvidia.com/gpu"
DEFAULT_INSTANCES_PER_GPU: Final = 1
DEFAULT_STARTUP_TIMEOUT_S: Final = 600
DEFAULT_REPLICAS: Final = 1
DEFAULT_AUTOSCALING_ENABLED: Final = False
DEFAULT_MIN_REPLICAS: Final = 1
DEFAULT_MAX_REPLICAS: Final = 4
DEFAULT_METRIC: Final = "queueTime"
DEFAULT_QUEUE_TIME_TARGET: Final = "50ms"
DEFAULT_SCALE_DOWN_DELAY: Final = "300s"
DEFAULT_STABLE_WINDOW: Final = "60s"
DEFAULT_PANIC_WINDOW: Final = "6s"
MIN_SCALE_TO_ZERO_AFTER_S: Final = 30.0  # shorter idle windows would flap (and reload the model) for nothing
MAX_SCALE_TO_ZERO_AFTER_S: Final = 7 * 86400.0
DEFAULT_STRATEGY: Final = "Canary"
DEFAULT_MAX_SURGE_GPUS: Final[int | None] = None  # unset: one pod (rollout/replicas.py)
DEFAULT_PROGRESS_DEADLINE: Final = "10m"
DEFAULT_STEP_PAUSE: Final = "60s"
DEFAULT_STEPS: Final = ((10, "60s"), (50, "120s"))
DEFAULT_ANALYSIS_INTERVAL: Final = "15s"
DEFAULT_MIN_REQUESTS: Final = 50
DEFAULT_MAX_ERROR_RATE: Final = 0.01
DEFAULT_MAX_LATENCY_RATIO: Final = 1.25
DEFAULT_FAILURE_LIMIT: Final = 2

FORMATS: Final = ("onnx", "torchscript", "pytorch-export", "python")
CONVERTED_FORMATS: Final = frozenset({"torchscript", "pytorch-export"})
QUANTIZE_MODES: Final = ("none", "int8")
TUNE_OBJECTIVES: Final = ("throughput", "latency")
TUNE_ON_MISS: Final = ("ServeBest", "Fail")
TUNE_BUDGET_RANGE_S: Final = (10.0, 3600.0)  # at least a few candidates; within the build Job's hour
MAX_TUNE_CONCURRENCY: Final = 256
INPUT_DTYPES: Final = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
DEFAULT_INPUT_DTYPE: Final = "float32"
MAX_INPUTS: Final = 32
MAX_INPUT_RANK: Final = 8
MAX_INPUT_DIM: Final = 1_048_576
_TENSOR_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")
METRICS: Final = ("queueTime", "pendingRequests", "inferenceRate", "gpuUtilization")
STRATEGIES: Final = ("Canary", "Recreate")
URI_SCHEMES: Final = ("s3", "gs", "http", "https", "pvc", "file")
MAX_NAME_LENGTH: Final = 56  # "<name>-canary" must fit a 63-character Service name
MAX_SOURCE_BYTES: Final = 2**40  # spec.model.source.maxBytes: at most 1 TiB (it only lowers the operator's limit)

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-._A-Za-z0-9]*[A-Za-z0-9])?$")
_SHA256 = re.compile(r"^[A-Fa-f0-9]{64}$")
_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_QUANTITY = re.compile(
    r"^[+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_DURATION = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)$")
_PERCENT = re.compile(r"^([0-9]+(\.[0-9]+)?)%?$")
_URI_RULES: Final = (
    (re.compile(r"^(s3|gs)://"), re.compile(r"^(s3|gs)://[^/]+/.+$"), "must be s3://BUCKET/KEY or gs://BUCKET/KEY"),
    (
        re.compile(r"^pvc://"),
        re.compile(r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[^/].*$"),
        "must be pvc://CLAIM/PATH, CLAIM a PersistentVolumeClaim name in this namespace",
    ),
    (re.compile(r"^https?://"), re.compile(r"^https?://[^/]+(/.*)?$"), "must be http(s)://HOST/PATH"),
    (re.compile(r"^file://"), re.compile(r"^file:///.+$"), "must be file:///ABSOLUTE/PATH"),
)


class SpecError(ValueError):
    """A spec the operator cannot serve; `field` is the path to report in a condition or event."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# ---------------------------------------------------------------- the typed spec


class FrozenMap(Mapping[str, str]):
    """Read-only map for the spec's maps; unlike MappingProxyType it hashes, pickles and deep-copies."""

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._data = dict(items)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


@dataclass(frozen=True)
class SourceSpec:
    """Where the loader fetches the model; the secret is only named, never read."""

    uri: str
    credentials_secret: str | None = None
    sha256: str | None = None  # lowercase hex
    max_bytes: int | None = None  # lowers the operator's download limit for this model; None: the operator's

    @property
    def scheme(self) -> str:
        """URI scheme (s3, gs, http, https, pvc, file)."""
        return self.uri.split("://", 1)[0]

    @property
    def pvc_claim(self) -> str | None:
        """Claim name of a pvc:// source, which the pod must mount; None for other schemes."""
        if self.scheme != "pvc":
            return None
        return self.uri[len("pvc://") :].split("/", 1)[0]

    @property
    def pvc_path(self) -> str | None:
        """Path inside the claim of a pvc:// source; None for other schemes."""
        if self.scheme != "pvc":
            return None
        return self.uri[len("pvc://") :].split("/", 1)[1]


@dataclass(frozen=True)
class DynamicBatchingSpec:
    """Triton's dynamic batcher settings; present only when batching is on."""

    max_queue_delay_microseconds: int = DEFAULT_MAX_QUEUE_DELAY_US
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class TuneSpec:
    """Deploy-time tuning (docs/tuning.md): the build measures Triton configurations on the serving
    hardware and serves the best. Seconds for the bound and the budget."""

    objective: str = DEFAULT_TUNE_OBJECTIVE
    max_p99: float | None = None
    budget: float = 180.0
    when_bound_not_met: str = DEFAULT_TUNE_ON_MISS
    concurrency: tuple[int, ...] = DEFAULT_TUNE_CONCURRENCY


@dataclass(frozen=True)
class OptimizationSpec:
    """What the loader does to the model before Triton sees it."""

    quantize: str = DEFAULT_QUANTIZE
    warmup: bool = DEFAULT_WARMUP
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    tune: TuneSpec | None = None  # opt-in; hashed only when set


@dataclass(frozen=True)
class InputSpec:
    """One input tensor of a model format that records no shapes (TorchScript)."""

    name: str
    dtype: str
    shape: tuple[int, ...]  # per sample, without the batch axis


@dataclass(frozen=True)
class ModelSpec:
    """The model and how Triton runs it (part of the revision)."""

    name: str
    version: str
    source: SourceSpec
    format: str = DEFAULT_FORMAT
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    dynamic_batching: DynamicBatchingSpec | None = None
    optimization: OptimizationSpec = field(default_factory=OptimizationSpec)
    inputs: tuple[InputSpec, ...] = ()
    validation_data_uri: str | None = None

    @property
    def needs_conversion(self) -> bool:
        """True when the loader must convert to ONNX (and so runs from the converter image)."""
        return self.format in CONVERTED_FORMATS


@dataclass(frozen=True)
class Toleration:
    """A pod toleration, kept typed so the builder emits only the keys that were set."""

    key: str | None = None
    operator: str | None = None
    value: str | None = None
    effect: str | None = None
    toleration_seconds: int | None = None

    def to_manifest(self) -> dict[str, Any]:
        """The Kubernetes form, without unset keys (so it round-trips through the API unchanged)."""
        out: dict[str, Any] = {}
        for name, key in (("key", "key"), ("operator", "operator"), ("value", "value"), ("effect", "effect")):
            if (val := getattr(self, name)) is not None:
                out[key] = val
        if self.toleration_seconds is not None:
            out["tolerationSeconds"] = self.toleration_seconds
        return out


@dataclass(frozen=True)
class ResourcesSpec:
    """Container requests/limits as quantity strings (ints normalized to strings)."""

    requests: Mapping[str, str] = field(default_factory=FrozenMap)
    limits: Mapping[str, str] = field(default_factory=FrozenMap)


@dataclass(frozen=True)
class ServingSpec:
    """How the serving pods run (part of the revision)."""

    image: str | None = None
    loader_image: str | None = None
    gpus: int = DEFAULT_GPUS
    gpu_resource_name: str = DEFAULT_GPU_RESOURCE
    instances_per_gpu: int = DEFAULT_INSTANCES_PER_GPU
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    node_selector: Mapping[str, str] = field(default_factory=FrozenMap)
    tolerations: tuple[Toleration, ...] = ()
    priority_class_name: str | None = None
    startup_timeout_seconds: int = DEFAULT_STARTUP_TIMEOUT_S


@dataclass(frozen=True)
class AutoscalingSpec:
    """The operator's autoscaler; `target` is in seconds for queueTime, percent for gpuUtilization."""

    enabled: bool = DEFAULT_AUTOSCALING_ENABLED
    min_replicas: int = DEFAULT_MIN_REPLICAS
    max_replicas: int = DEFAULT_MAX_REPLICAS
    metric: str = DEFAULT_METRIC
    target: float = 0.05
    target_text: str = DEFAULT_QUEUE_TIME_TARGET  # as the user wrote it, for events and status
    scale_down_delay: float = 300.0
    stable_window: float = 60.0
    panic_window: float = 6.0
    # minReplicas: 0 parses as min_replicas 1 (the fewest pods while serving: the recommender never
    # goes below it) plus this idle window, after which autoscale/zero.py takes the model to 0 pods.
    # None: the model never scales to zero.
    scale_to_zero_after: float | None = None

    @property
    def scales_to_zero(self) -> bool:
        return self.enabled and self.scale_to_zero_after is not None


@dataclass(frozen=True)
class CanaryStep:
    """One canary step: hold `weight` percent of traffic for `pause` seconds."""

    weight: int
    pause: float


@dataclass(frozen=True)
class AnalysisSpec:
    """Thresholds the canary is judged against; durations in seconds."""

    interval: float = 15.0
    min_requests: int = DEFAULT_MIN_REQUESTS
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    max_latency_ratio: float = DEFAULT_MAX_LATENCY_RATIO
    max_p99_latency: float | None = None
    failure_limit: int = DEFAULT_FAILURE_LIMIT


@dataclass(frozen=True)
class ValidationSpec:
    """Offline check of a canary on a labelled dataset before it takes traffic."""

    dataset_uri: str
    min_accuracy: float | None = None
    min_agreement: float | None = None


@dataclass(frozen=True)
class ParentRef:
    """A Gateway API parentRef for the HTTPRoute."""

    name: str
    namespace: str | None = None
    group: str | None = None
    kind: str | None = None
    section_name: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class GatewayAPISpec:
    """Weighted routing through a Gateway API HTTPRoute."""

    enabled: bool = False
    parent_refs: tuple[ParentRef, ...] = ()


@dataclass(frozen=True)
class RolloutSpec:
    """How a new revision replaces the old one."""

    strategy: str = DEFAULT_STRATEGY
    max_surge_gpus: int | None = DEFAULT_MAX_SURGE_GPUS  # None: one pod, whatever GPUs it needs
    steps: tuple[CanaryStep, ...] = field(
        default_factory=lambda: tuple(CanaryStep(w, parse_duration(p)) for w, p in DEFAULT_STEPS)
    )
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    validation: ValidationSpec | None = None
    gateway_api: GatewayAPISpec = field(default_factory=GatewayAPISpec)
    progress_deadline: float = 600.0  # seconds a live canary may go without progress before it is rolled back


@dataclass(frozen=True)
class ModelDeploymentSpec:
    """The whole spec, defaulted and validated."""

    model: ModelSpec
    serving: ServingSpec = field(default_factory=ServingSpec)
    replicas: int = DEFAULT_REPLICAS
    autoscaling: AutoscalingSpec = field(default_factory=AutoscalingSpec)
    rollout: RolloutSpec = field(default_factory=RolloutSpec)


# ---------------------------------------------------------------- durations


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration ("500ms", "15s", "1m30s", "1.5h"); the CRD's pattern."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise ValueError(f"invalid duration {text!r}: use a number with ms, s, m or h, e.g. 15s or 1m30s")
    return sum(float(num) * _DURATION_UNITS[unit] for num, unit in _DURATION_PART.findall(text))


def format_duration(seconds: float) -> str:
    """Short human form of a duration in seconds (for events): 0.05 -> "50ms", 90 -> "90s"."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


# ---------------------------------------------------------------- small typed readers


def _section(parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    """A nested object, {} when absent, so callers apply defaults uniformly."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(path, "must be an object")
    return value


def _int(m: Mapping[str, Any], key: str, path: str, default: int | None, lo: int, hi: int) -> int:
    value = m.get(key, default)
    if value is None:
        raise SpecError(path, "is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise SpecError(path, f"must be between {lo} and {hi}, not {value}")
    return value


def _num(m: Mapping[str, Any], key: str, path: str, default: float | None, lo: float, hi: float) -> float:
    value = m.get(key, default)
    if value is None:
        raise SpecError(path, "is required")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(path, f"must be a number, not {value!r}")
    if not lo <= value <= hi:
        raise SpecError(path, f"must be between {lo:g} and {hi:g}, not {value:g}")
    return float(value)


def _opt_num(m: Mapping[str, Any], key: str, path: str, lo: float, hi: float) -> float | None:
    return None if m.get(key) is None else _num(m, key, path, None, lo, hi)


def _bool(m: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = m.get(key, default)
    if not isinstance(value, bool):
        raise SpecError(path, f"must be true or false, not {value!r}")
    return value


def _str(
    m: Mapping[str, Any],
    key: str,
    path: str,
    default: str | None = None,
    *,
    pattern: re.Pattern[str] | None = None,
    choices: Iterable[str] | None = None,
    max_len: int = 2048,
    what: str = "",
) -> str | None:
    """An optional string; "" counts as absent (the CRD lets users write empty = default)."""
    value = m.get(key)
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise SpecError(path, f"must be a string, not {value!r}")
    if len(value) > max_len:
        raise SpecError(path, f"must be at most {max_len} characters")
    if choices is not None and value not in (allowed := tuple(choices)):
        raise SpecError(path, f"must be one of {', '.join(allowed)}, not {value!r}")
    if pattern is not None and not pattern.match(value):
        raise SpecError(path, f"must be {what or 'valid'}, not {value!r}")
    return value


def _duration(m: Mapping[str, Any], key: str, path: str, default: str | None) -> float | None:
    text = m.get(key, default)
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise SpecError(path, str(exc)) from None


# ---------------------------------------------------------------- sections


def validate_name(name: str) -> None:
    """metadata.name names Services (<name>-canary), so it must be a short DNS-1035 label."""
    if not _DNS1035_LABEL.match(name):
        raise SpecError("metadata.name", "must be a DNS-1035 label (lowercase letters, digits, '-', letter first)")
    if len(name) > MAX_NAME_LENGTH:
        raise SpecError("metadata.name", f"must be at most {MAX_NAME_LENGTH} characters")


def _check_uri(uri: str, path: str) -> None:
    if "://" not in uri or uri.split("://", 1)[0] not in URI_SCHEMES or any(c.isspace() for c in uri):
        raise SpecError(path, "must start with one of s3://, gs://, http://, https://, pvc://, file://")
    for applies, valid, message in _URI_RULES:
        if applies.match(uri) and not valid.match(uri):
            raise SpecError(path, message)


def _parse_source(m: Mapping[str, Any]) -> SourceSpec:
    p = "spec.model.source"
    uri = _str(m, "uri", f"{p}.uri")
    if uri is None:
        raise SpecError(f"{p}.uri", "is required")
    _check_uri(uri, f"{p}.uri")
    secret = _str(
        m, "credentialsSecret", f"{p}.credentialsSecret", pattern=_DNS1123_SUBDOMAIN, max_len=253, what="a Secret name"
    )
    sha = _str(m, "sha256", f"{p}.sha256", pattern=_SHA256, what="64 hex characters")
    max_bytes = None if m.get("maxBytes") is None else _int(m, "maxBytes", f"{p}.maxBytes", None, 1, MAX_SOURCE_BYTES)
    return SourceSpec(uri=uri, credentials_secret=secret, sha256=sha.lower() if sha else None, max_bytes=max_bytes)


def _parse_model(m: Mapping[str, Any], default_name: str | None) -> ModelSpec:
    p = "spec.model"
    name = _str(m, "name", f"{p}.name", default_name, pattern=_DNS1123_LABEL, max_len=63, what="a DNS-1123 label")
    if name is None:
        raise SpecError(f"{p}.name", "is required when metadata.name is not known")
    version = _str(
        m,
        "version",
        f"{p}.version",
        DEFAULT_MODEL_VERSION,
        pattern=_LABEL_VALUE,
        max_len=63,
        what="a label value (letters, digits, '-', '_', '.')",
    )
    if "source" not in m:
        raise SpecError(f"{p}.source", "is required")
    source = _parse_source(_section(m, "source", f"{p}.source"))
    fmt = _str(m, "format", f"{p}.format", DEFAULT_FORMAT, choices=FORMATS)
    max_batch = _int(m, "maxBatchSize", f"{p}.maxBatchSize", DEFAULT_MAX_BATCH_SIZE, 0, 4096)

    batching: DynamicBatchingSpec | None = None
    if m.get("dynamicBatching") is not None:
        db = _section(m, "dynamicBatching", f"{p}.dynamicBatching")
        if max_batch == 0:
            raise SpecError(f"{p}.dynamicBatching", "must be absent when spec.model.maxBatchSize is 0 (no batching)")
        sizes_raw = db.get("preferredBatchSizes") or []
        if not isinstance(sizes_raw, list) or len(sizes_raw) > 16:
            raise SpecError(f"{p}.dynamicBatching.preferredBatchSizes", "must be a list of at most 16 integers")
        sizes = tuple(
            _int({"v": s}, "v", f"{p}.dynamicBatching.preferredBatchSizes[{i}]", None, 1, 4096)
            for i, s in enumerate(sizes_raw)
        )
        if len(set(sizes)) != len(sizes):
            raise SpecError(f"{p}.dynamicBatching.preferredBatchSizes", "must not repeat a size")
        if any(s > max_batch for s in sizes):
            raise SpecError(f"{p}.dynamicBatching.preferredBatchSizes", "must each be <= spec.model.maxBatchSize")
        delay = _int(
            db,
            "maxQueueDelayMicroseconds",
            f"{p}.dynamicBatching.maxQueueDelayMicroseconds",
            DEFAULT_MAX_QUEUE_DELAY_US,
            0,
            10_000_000,
        )
        batching = DynamicBatchingSpec(max_queue_delay_microseconds=delay, preferred_batch_sizes=sizes)

    o = _section(m, "optimization", f"{p}.optimization")
    quantize = _str(o, "quantize", f"{p}.optimization.quantize", DEFAULT_QUANTIZE, choices=QUANTIZE_MODES)
    if quantize == "int8" and fmt == "python":
        raise SpecError(
            f"{p}.optimization.quantize",
            "int8 is only supported for formats onnx, torchscript and pytorch-export, not python",
        )
    tune = None
    if o.get("tune") is not None:
        tune = _parse_tune(_section(o, "tune", f"{p}.optimization.tune"), str(fmt), max_batch)
    optimization = OptimizationSpec(
        quantize=str(quantize),
        warmup=_bool(o, "warmup", f"{p}.optimization.warmup", DEFAULT_WARMUP),
        min_agreement=_num(o, "minAgreement", f"{p}.optimization.minAgreement", DEFAULT_MIN_AGREEMENT, 0, 1),
        tune=tune,
    )
    validation_uri = _str(m, "validationDataUri", f"{p}.validationDataUri")
    if validation_uri is not None:
        _check_uri(validation_uri, f"{p}.validationDataUri")
        _check_same_claim(validation_uri, source)
    return ModelSpec(
        name=name,
        version=str(version),
        source=source,
        format=str(fmt),
        max_batch_size=max_batch,
        dynamic_batching=batching,
        optimization=optimization,
        inputs=_parse_inputs(m.get("inputs"), str(fmt)),
        validation_data_uri=validation_uri,
    )


def _parse_tune(m: Mapping[str, Any], fmt: str, max_batch: int) -> TuneSpec:
    p = "spec.model.optimization.tune"
    if fmt == "python":
        raise SpecError(p, "applies to formats onnx, torchscript and pytorch-export (the loader writes their "
                           "config.pbtxt), not python")
    if max_batch < 1:
        raise SpecError(p, "needs spec.model.maxBatchSize >= 1: tuning batches single-sample requests")
    budget = _duration(m, "budget", f"{p}.budget", DEFAULT_TUNE_BUDGET)
    assert budget is not None
    lo, hi = TUNE_BUDGET_RANGE_S
    if not lo <= budget <= hi:
        raise SpecError(f"{p}.budget", f"must be between {lo:g}s and {hi / 60:g}m, not {budget:g}s")
    max_p99 = _duration(m, "maxP99", f"{p}.maxP99", None)
    if max_p99 is not None and max_p99 <= 0:
        raise SpecError(f"{p}.maxP99", "must be more than 0")
    raw = m.get("concurrency")
    levels = DEFAULT_TUNE_CONCURRENCY
    if raw is not None:
        if not isinstance(raw, list) or not 1 <= len(raw) <= 8:
            raise SpecError(f"{p}.concurrency", "must be a list of 1 to 8 integers")
        levels = tuple(_int({"v": c}, "v", f"{p}.concurrency[{i}]", None, 1, MAX_TUNE_CONCURRENCY)
                       for i, c in enumerate(raw))
        if len(set(levels)) != len(levels):
            raise SpecError(f"{p}.concurrency", "must not repeat a level")
    return TuneSpec(
        objective=str(_str(m, "objective", f"{p}.objective", DEFAULT_TUNE_OBJECTIVE, choices=TUNE_OBJECTIVES)),
        max_p99=max_p99,
        budget=budget,
        when_bound_not_met=str(_str(m, "whenBoundNotMet", f"{p}.whenBoundNotMet", DEFAULT_TUNE_ON_MISS,
                                    choices=TUNE_ON_MISS)),
        concurrency=tuple(sorted(levels)),
    )


def _check_same_claim(uri: str, source: SourceSpec) -> None:
    """The loader mounts only the source's claim, so a pvc:// validation file must live on it."""
    claim = SourceSpec(uri=uri).pvc_claim
    if claim is None:
        return
    if claim != source.pvc_claim:
        raise SpecError(
            "spec.model.validationDataUri",
            f"pvc:// must name the claim of spec.model.source.uri ({source.pvc_claim or 'not a pvc:// source'}), "
            f"not {claim!r}: the loader mounts only that claim",
        )


def _parse_inputs(raw: Any, fmt: str) -> tuple[InputSpec, ...]:
    p = "spec.model.inputs"
    if raw is None or raw == []:
        return ()
    if fmt != "torchscript":
        raise SpecError(p, f"is only for format torchscript (format {fmt} records its own input shapes)")
    if not isinstance(raw, list) or len(raw) > MAX_INPUTS:
        raise SpecError(p, f"must be a list of at most {MAX_INPUTS} inputs")
    inputs: list[InputSpec] = []
    for i, item in enumerate(raw):
        q = f"{p}[{i}]"
        if not isinstance(item, Mapping):
            raise SpecError(q, "must be an object with name, dtype and shape")
        name = _str(item, "name", f"{q}.name", pattern=_TENSOR_NAME, max_len=128, what="a tensor name")
        if name is None:
            raise SpecError(f"{q}.name", "is required")
        if any(x.name == name for x in inputs):
            raise SpecError(f"{q}.name", f"repeats input {name!r}")
        dtype = _str(item, "dtype", f"{q}.dtype", DEFAULT_INPUT_DTYPE, choices=INPUT_DTYPES)
        dims = item.get("shape")
        if not isinstance(dims, list) or len(dims) > MAX_INPUT_RANK:
            raise SpecError(f"{q}.shape", f"must be a list of at most {MAX_INPUT_RANK} dimensions (no batch axis)")
        shape = tuple(_int({"v": d}, "v", f"{q}.shape[{j}]", None, 1, MAX_INPUT_DIM) for j, d in enumerate(dims))
        inputs.append(InputSpec(name=name, dtype=str(dtype), shape=shape))
    return tuple(inputs)


def _quantities(m: Mapping[str, Any], path: str) -> Mapping[str, str]:
    if not isinstance(m, Mapping):
        raise SpecError(path, "must be a map of resource name to quantity")
    out: dict[str, str] = {}
    for key in sorted(m):
        value = m[key]
        if isinstance(value, bool) or not isinstance(value, int | str) or not _QUANTITY.match(str(value)):
            raise SpecError(f"{path}.{key}", f"must be a quantity such as 2, 500m or 8Gi, not {value!r}")
        out[str(key)] = str(value)
    return FrozenMap(out)


def _parse_tolerations(raw: Any) -> tuple[Toleration, ...]:
    p = "spec.serving.tolerations"
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > 32:
        raise SpecError(p, "must be a list of at most 32 tolerations")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, Mapping):
            raise SpecError(f"{p}[{i}]", "must be an object")
        op = _str(t, "operator", f"{p}[{i}].operator", choices=("Equal", "Exists"))
        effect = t.get("effect")
        if effect is not None and effect not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise SpecError(f"{p}[{i}].effect", f"must be NoSchedule, PreferNoSchedule or NoExecute, not {effect!r}")
        seconds = t.get("tolerationSeconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
            raise SpecError(f"{p}[{i}].tolerationSeconds", "must be an integer")
        out.append(
            Toleration(
                key=_str(t, "key", f"{p}[{i}].key"),
                operator=op,
                value=_str(t, "value", f"{p}[{i}].value"),
                effect=effect or None,
                toleration_seconds=seconds,
            )
        )
    return tuple(out)


def _parse_serving(m: Mapping[str, Any]) -> ServingSpec:
    p = "spec.serving"
    gpu_name = _str(
        m,
        "gpuResourceName",
        f"{p}.gpuResourceName",
        DEFAULT_GPU_RESOURCE,
        pattern=_RESOURCE_NAME,
        max_len=253,
        what="an extended resource name such as nvidia.com/gpu",
    )
    r = _section(m, "resources", f"{p}.resources")
    resources = ResourcesSpec(
        requests=_quantities(r.get("requests") or {}, f"{p}.resources.requests"),
        limits=_quantities(r.get("limits") or {}, f"{p}.resources.limits"),
    )
    if gpu_name in resources.requests or gpu_name in resources.limits:
        raise SpecError(f"{p}.resources", "must not name the GPU resource: set spec.serving.gpus instead")
    selector = m.get("nodeSelector") or {}
    if not isinstance(selector, Mapping) or not all(isinstance(v, str) for v in selector.values()):
        raise SpecError(f"{p}.nodeSelector", "must be a map of label to string value")
    return ServingSpec(
        image=_str(m, "image", f"{p}.image", max_len=512),
        loader_image=_str(m, "loaderImage", f"{p}.loaderImage", max_len=512),
        gpus=_int(m, "gpus", f"{p}.gpus", DEFAULT_GPUS, 0, 16),
        gpu_resource_name=str(gpu_name),
        instances_per_gpu=_int(m, "instancesPerGpu", f"{p}.instancesPerGpu", DEFAULT_INSTANCES_PER_GPU, 1, 16),
        resources=resources,
        node_selector=FrozenMap({str(k): selector[k] for k in sorted(selector)}),
        tolerations=_parse_tolerations(m.get("tolerations")),
        priority_class_name=_str(
            m,
            "priorityClassName",
            f"{p}.priorityClassName",
            pattern=_DNS1123_SUBDOMAIN,
            max_len=253,
            what="a PriorityClass name",
        ),
        startup_timeout_seconds=_int(
            m, "startupTimeoutSeconds", f"{p}.startupTimeoutSeconds", DEFAULT_STARTUP_TIMEOUT_S, 10, 86400
        ),
    )


def _parse_target(metric: str, raw: Any) -> tuple[float, str]:
    """Normalize the autoscaling target to one float in the metric's unit, keeping the user's text."""
    p = "spec.autoscaling.target"
    if raw is None or raw == "":
        if metric != "queueTime":
            raise SpecError(p, "is required when spec.autoscaling.metric is not queueTime")
        raw = DEFAULT_QUEUE_TIME_TARGET
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise SpecError(p, f"must be a number or a string, not {raw!r}")
    text = str(raw)
    if metric == "queueTime":
        if not isinstance(raw, str) or not _DURATION.match(raw):
            raise SpecError(p, "must be a duration such as 50ms when spec.autoscaling.metric is queueTime")
        return parse_duration(raw), text
    if metric == "gpuUtilization":
        match = _PERCENT.match(text)
        if not match or not 1 <= float(match.group(1)) <= 100:
            raise SpecError(p, "must be a percentage between 1 and 100 when spec.autoscaling.metric is gpuUtilization")
        return float(match.group(1)), text
    if not _NUMBER.match(text) or float(text) <= 0:
        raise SpecError(p, "must be a positive number when spec.autoscaling.metric is pendingRequests or inferenceRate")
    return float(text), text


def _parse_autoscaling(m: Mapping[str, Any]) -> AutoscalingSpec:
    p = "spec.autoscaling"
    lo = _int(m, "minReplicas", f"{p}.minReplicas", DEFAULT_MIN_REPLICAS, 0, 1000)
    hi = _int(m, "maxReplicas", f"{p}.maxReplicas", DEFAULT_MAX_REPLICAS, 1, 1000)
    if lo > hi:
        raise SpecError(f"{p}.minReplicas", "must be <= spec.autoscaling.maxReplicas")
    to_zero = _duration(m, "scaleToZeroAfter", f"{p}.scaleToZeroAfter", None)
    if to_zero is not None and lo != 0:
        raise SpecError(f"{p}.scaleToZeroAfter", "needs spec.autoscaling.minReplicas: 0")
    if lo == 0 and to_zero is None:
        raise SpecError(f"{p}.scaleToZeroAfter", "is required when spec.autoscaling.minReplicas is 0 "
                        "(how long without requests before the model goes to zero, e.g. 10m)")
    if to_zero is not None and not MIN_SCALE_TO_ZERO_AFTER_S <= to_zero <= MAX_SCALE_TO_ZERO_AFTER_S:
        raise SpecError(f"{p}.scaleToZeroAfter", "must be between 30s and 168h")
    metric = str(_str(m, "metric", f"{p}.metric", DEFAULT_METRIC, choices=METRICS))
    target, text = _parse_target(metric, m.get("target"))
    stable = _duration(m, "stableWindow", f"{p}.stableWindow", DEFAULT_STABLE_WINDOW)
    panic = _duration(m, "panicWindow", f"{p}.panicWindow", DEFAULT_PANIC_WINDOW)
    assert stable is not None and panic is not None
    if panic > stable:
        raise SpecError(f"{p}.panicWindow", "must be <= spec.autoscaling.stableWindow")
    delay = _duration(m, "scaleDownDelay", f"{p}.scaleDownDelay", DEFAULT_SCALE_DOWN_DELAY)
    assert delay is not None
    return AutoscalingSpec(
        enabled=_bool(m, "enabled", f"{p}.enabled", DEFAULT_AUTOSCALING_ENABLED),
        min_replicas=max(1, lo),
        max_replicas=hi,
        metric=metric,
        target=target,
        target_text=text,
        scale_down_delay=delay,
        stable_window=stable,
        panic_window=panic,
        scale_to_zero_after=to_zero,
    )


def _parse_steps(raw: Any) -> tuple[CanaryStep, ...]:
    p = "spec.rollout.steps"
    if raw is None:
        raw = [{"weight": w, "pause": pause} for w, pause in DEFAULT_STEPS]
    if not isinstance(raw, list) or not 1 <= len(raw) <= 10:
        raise SpecError(p, "must be a list of 1 to 10 steps")
    steps = []
    for i, s in enumerate(raw):
        if not isinstance(s, Mapping):
            raise SpecError(f"{p}[{i}]", "must be an object")
        weight = _int(s, "weight", f"{p}[{i}].weight", None, 1, 100)
        pause = _duration(s, "pause", f"{p}[{i}].pause", DEFAULT_STEP_PAUSE)
        assert pause is not None
        steps.append(CanaryStep(weight=weight, pause=pause))
    if any(b.weight <= a.weight for a, b in itertools.pairwise(steps)):
        raise SpecError(p, "weights must be strictly increasing")
    return tuple(steps)


def _parse_analysis(m: Mapping[str, Any]) -> AnalysisSpec:
    p = "spec.rollout.analysis"
    interval = _duration(m, "interval", f"{p}.interval", DEFAULT_ANALYSIS_INTERVAL)
    assert interval is not None
    if interval < 1:
        raise SpecError(f"{p}.interval", "must be at least 1s")
    return AnalysisSpec(
        interval=interval,
        min_requests=_int(m, "minRequests", f"{p}.minRequests", DEFAULT_MIN_REQUESTS, 0, 100_000_000),
        max_error_rate=_num(m, "maxErrorRate", f"{p}.maxErrorRate", DEFAULT_MAX_ERROR_RATE, 0, 1),
        max_latency_ratio=_num(m, "maxLatencyRatio", f"{p}.maxLatencyRatio", DEFAULT_MAX_LATENCY_RATIO, 1, 100),
        max_p99_latency=_duration(m, "maxP99Latency", f"{p}.maxP99Latency", None),
        failure_limit=_int(m, "failureLimit", f"{p}.failureLimit", DEFAULT_FAILURE_LIMIT, 1, 100),
    )


def _parse_validation(m: Mapping[str, Any], strategy: str) -> ValidationSpec:
    p = "spec.rollout.validation"
    if strategy != "Canary":
        raise SpecError(p, "requires spec.rollout.strategy Canary")
    uri = _str(m, "datasetUri", f"{p}.datasetUri")
    if uri is None:
        raise SpecError(f"{p}.datasetUri", "is required")
    _check_uri(uri, f"{p}.datasetUri")
    accuracy = _opt_num(m, "minAccuracy", f"{p}.minAccuracy", 0, 1)
    agreement = _opt_num(m, "minAgreement", f"{p}.minAgreement", 0, 1)
    if accuracy is None and agreement is None:
        raise SpecError(p, "must set minAccuracy or minAgreement")
    return ValidationSpec(dataset_uri=uri, min_accuracy=accuracy, min_agreement=agreement)


def _parse_gateway(m: Mapping[str, Any]) -> GatewayAPISpec:
    p = "spec.rollout.trafficRouting.gatewayAPI"
    enabled = _bool(m, "enabled", f"{p}.enabled", False)
    raw = m.get("parentRefs") or []
    if not isinstance(raw, list) or len(raw) > 8:
        raise SpecError(f"{p}.parentRefs", "must be a list of at most 8 parent references")
    refs = []
    for i, r in enumerate(raw):
        if not isinstance(r, Mapping):
            raise SpecError(f"{p}.parentRefs[{i}]", "must be an object")
        name = _str(r, "name", f"{p}.parentRefs[{i}].name")
        if name is None:
            raise SpecError(f"{p}.parentRefs[{i}].name", "is required")
        port = r.get("port")
        refs.append(
            ParentRef(
                name=name,
                namespace=_str(r, "namespace", f"{p}.parentRefs[{i}].namespace"),
                group=_str(r, "group", f"{p}.parentRefs[{i}].group"),
                kind=_str(r, "kind", f"{p}.parentRefs[{i}].kind"),
                section_name=_str(r, "sectionName", f"{p}.parentRefs[{i}].sectionName"),
                port=None if port is None else _int(r, "port", f"{p}.parentRefs[{i}].port", None, 1, 65535),
            )
        )
    if enabled and not refs:
        raise SpecError(f"{p}.parentRefs", "must name at least one Gateway when enabled")
    return GatewayAPISpec(enabled=enabled, parent_refs=tuple(refs))


def _parse_rollout(m: Mapping[str, Any]) -> RolloutSpec:
    p = "spec.rollout"
    strategy = str(_str(m, "strategy", f"{p}.strategy", DEFAULT_STRATEGY, choices=STRATEGIES))
    validation = None
    if m.get("validation") is not None:
        validation = _parse_validation(_section(m, "validation", f"{p}.validation"), strategy)
    routing = _section(m, "trafficRouting", f"{p}.trafficRouting")
    return RolloutSpec(
        strategy=strategy,
        max_surge_gpus=None if m.get("maxSurgeGpus") is None else
        _int(m, "maxSurgeGpus", f"{p}.maxSurgeGpus", None, 0, 1024),
        steps=_parse_steps(m.get("steps")),
        analysis=_parse_analysis(_section(m, "analysis", f"{p}.analysis")),
        validation=validation,
        gateway_api=_parse_gateway(_section(routing, "gatewayAPI", f"{p}.trafficRouting.gatewayAPI")),
        progress_deadline=_progress_deadline(m, f"{p}.progressDeadline"),
    )


def _progress_deadline(m: Mapping[str, Any], path: str) -> float:
    seconds = _duration(m, "progressDeadline", path, DEFAULT_PROGRESS_DEADLINE)
    assert seconds is not None
    if seconds < 1:
        raise SpecError(path, "must be at least 1s")
    return seconds


def parse_spec(spec: Mapping[str, Any], *, name: str | None = None) -> ModelDeploymentSpec:
    """Defaulted, validated spec; `name` is metadata.name (the default model name). Raises SpecError."""
    if not isinstance(spec, Mapping):
        raise SpecError("spec", "must be an object")
    if name is not None:
        validate_name(name)
    if spec.get("model") is None:
        raise SpecError("spec.model", "is required")
    return ModelDeploymentSpec(
        model=_parse_model(_section(spec, "model", "spec.model"), name),
        serving=_parse_serving(_section(spec, "serving", "spec.serving")),
        replicas=_int(spec, "replicas", "spec.replicas", DEFAULT_REPLICAS, 0, 1000),
        autoscaling=_parse_autoscaling(_section(spec, "autoscaling", "spec.autoscaling")),
        rollout=_parse_rollout(_section(spec, "rollout", "spec.rollout")),
    )


# ---------------------------------------------------------------- revisions

_HASH_SCHEMA: Final = "modeldeploy/revision/v1"  # bump deliberately: every revision changes with it
# Fields added after v1 are hashed only when set: upgrading the operator must not roll out every model.
_HASHED_ONLY_WHEN_SET: Final = frozenset({"inputs", "validation_data_uri", "max_bytes", "tune"})


def _canonical(value: Any) -> Any:
    """Plain JSON-able form of the typed spec (dataclasses, mappings, tuples) for hashing."""
    if is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _canonical(getattr(value, f.name))
            for f in fields(value)
            if f.name not in _HASHED_ONLY_WHEN_SET or getattr(value, f.name)
        }
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    return value


def revision_hash(
    spec: ModelDeploymentSpec | Mapping[str, Any], *, name: str | None = None, images: Iterable[str] = ()
) -> str:
    """10 hex characters naming a revision: a hash of the model and serving spec only.

    Replicas, autoscaling and rollout settings are left out: changing them must not start a
    rollout. Hashing the parsed spec makes the result independent of key order and of whether
    a default was written out. `images` are the resolved image references (after the operator's
    defaults), so that a new default serving image is rolled out as a canary instead of
    restarting the stable pods in place.
    """
    parsed = spec if isinstance(spec, ModelDeploymentSpec) else parse_spec(spec, name=name)
    payload = {
        "schema": _HASH_SCHEMA,
        "model": _canonical(parsed.model),
        "serving": _canonical(parsed.serving),
        "images": list(images),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]
