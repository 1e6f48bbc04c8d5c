"""Triton's counters per pod, read from a Prometheus server instead of from each pod.

Where a Prometheus already scrapes the serving pods (a PodMonitor, or kubernetes_sd relabeling),
the operator can ask it once per decision instead of reaching into every pod: one instant query
(`/api/v1/query`) per call, stdlib HTTP only. Series are selected by the standard target labels
`namespace` and `pod` plus Triton's own `model` label, and give the same `TritonMetrics` as
scraping the pod (counters summed over the model's versions and failure reasons; the p99 request
latency is the `quantile="0.99"` series of Triton's summary as last scraped, the highest over the
model's versions).

Missing data is never zero: a pod without series, with samples older than `max_age`, or any
failure of the query (HTTP, timeout, API error, malformed answer) gives None for that pod (for
every pod when the query failed). The query building and answer parsing are pure; `query` does
the HTTP, as `scrape.py` does for pods.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Final

from .parse import _FIELDS as TRITON_FIELDS  # one name -> field mapping for both sources
from .parse import REQUEST_SUMMARY, TritonMetrics, is_p99

log = logging.getLogger(__name__)

GPU_UTILIZATION: Final = "nv_gpu_utilization"
# The per-pod sample time the query adds to its answer (not a real metric: built with label_replace).
SAMPLE_TIME: Final = "modeldeploy_sample_timestamp"
# Triton's own labels that tell one counter series from another; any other label (job, instance,
# endpoint, service, container) only says who scraped it, so equal keys are the same counter twice.
_SERIES_LABELS: Final = ("version", "reason", "gpu_uuid")
_RE2_SPECIAL: Final = frozenset("\\.+*?()|[]{}^$")  # what Go's regexp.QuoteMeta escapes
MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024

DEFAULT_TIMEOUT: Final = 2.0
DEFAULT_MAX_AGE: Final = 60.0


class PrometheusError(Exception):
    """The query gave no usable answer; the message is safe to log (no URL credentials)."""


def regex_escape(value: str) -> str:
    """`value` as a literal inside a PromQL (RE2) regex, like Go's regexp.QuoteMeta."""
    return "".join("\\" + c if c in _RE2_SPECIAL else c for c in value)


def promql_string(value: str) -> str:
    """`value` as a double-quoted PromQL string literal (backslash, quote and newline escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def build_query(namespace: str, pods: Iterable[str], model: str) -> str:
    """One instant query: every raw Triton series of the model (and the pods' GPU gauges), the
    p99 series of its request latency summary, plus one `SAMPLE_TIME` series per pod whose value
    is the real time of its latest scrape.

    Instant selectors answer with the evaluation time, not the sample's; `timestamp()` of a plain
    selector gives the sample's own time (one metric name only: timestamp() drops the name, so
    several names would collide). `or` keeps every side: their label sets never match (only the
    summary series have a `quantile` label). The quantile is matched as Triton writes it ("0.99");
    a pod whose Triton exports no summary simply has no such series (p99 None).
    """
    pod_names = sorted(set(pods))
    if not pod_names:
        raise ValueError("build_query needs at least one pod: pod=~\"\" would match series without a pod label")
    names = "|".join(regex_escape(n) for n in (*TRITON_FIELDS, GPU_UTILIZATION))
    pod_re = "|".join(regex_escape(p) for p in pod_names)
    target = f"namespace={promql_string(namespace)},pod=~{promql_string(pod_re)}"
    # model="" matches series without the label: the GPU gauges, which belong to the pod.
    values = f"{{__name__=~{promql_string(names)},{target},model=~{promql_string(regex_escape(model) + '|')}}}"
    p99 = f'{REQUEST_SUMMARY}{{{target},model={promql_string(model)},quantile="0.99"}}'
    one = f"nv_inference_count{{{target},model={promql_string(model)}}}"
    times = f'label_replace(max by (namespace, pod) (timestamp({one})), "__name__", "{SAMPLE_TIME}", "", "")'
    return f"{values} or {p99} or {times}"


def _sample(item: object) -> tuple[Mapping[str, str], float, float]:
    """(labels, evaluation time, value) of one element of a vector result."""
    if not isinstance(item, Mapping):
        raise PrometheusError("malformed answer: a result element is not an object")
    labels, pair = item.get("metric"), item.get("value")
    if not isinstance(labels, Mapping) or not isinstance(pair, list) or len(pair) != 2:
        raise PrometheusError("malformed answer: a result element has no metric or value")
    try:
        return labels, float(pair[0]), float(pair[1])
    except (TypeError, ValueError):
        raise PrometheusError("malformed answer: a sample is not a number") from None


def parse_response(payload: object, namespace: str, pods: Iterable[str], model: str,
                   max_age: float) -> dict[str, TritonMetrics | None]:
    """The answer to `build_query` -> metrics per pod (pure); raises PrometheusError if malformed.

    A pod is None without series for the model, or when its latest scrape is older than
    `max_age` seconds at the query's evaluation time (a dead pod's last values are not current).
    Duplicate series (the same pod scraped by two jobs) count once. A pod's p99 is None without
    a summary series or when it is NaN (no request in Triton's window).
    """
    wanted = dict.fromkeys(pods)
    if not isinstance(payload, Mapping) or payload.get("status") != "success":
        raise PrometheusError("malformed answer: status is not success")
    data = payload.get("data")
    if not isinstance(data, Mapping) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise PrometheusError("malformed answer: not a vector result")
    counters: dict[str, dict[tuple[str, ...], float]] = {}
    gpus: dict[str, dict[str, float]] = {}
    p99s: dict[str, dict[str, float]] = {}  # pod -> version -> p99 (us)
    scraped: dict[str, tuple[float, float]] = {}  # pod -> (evaluation time, sample time)
    for item in data["result"]:
        labels, at, value = _sample(item)
        pod, name = labels.get("pod", ""), labels.get("__name__", "")
        if pod not in wanted or labels.get("namespace") != namespace or not math.isfinite(value):
            continue
        if name == SAMPLE_TIME:
            scraped[pod] = (at, value)  # one per pod: the query takes the max over its series
        elif name == GPU_UTILIZATION:
            per_gpu, uuid = gpus.setdefault(pod, {}), labels.get("gpu_uuid", "")
            per_gpu[uuid] = max(value, per_gpu.get(uuid, value))
        elif name == REQUEST_SUMMARY:
            if labels.get("model") == model and is_p99(labels.get("quantile")):
                per_version, version = p99s.setdefault(pod, {}), labels.get("version", "")
                per_version[version] = max(value, per_version.get(version, value))
        elif name in TRITON_FIELDS and labels.get("model") == model:
            key = (name, *(labels.get(label, "") for label in _SERIES_LABELS))
            series = counters.setdefault(pod, {})
            series[key] = max(value, series.get(key, value))
    out: dict[str, TritonMetrics | None] = {}
    for pod in wanted:
        if pod not in counters or pod not in scraped:
            out[pod] = None
            continue
        at, sampled = scraped[pod]
        if at - sampled > max_age:
            log.debug("prometheus: samples of pod %s/%s are %.0fs old (max %.0fs): missing", namespace, pod,
                      at - sampled, max_age)
            out[pod] = None
            continue
        fields: dict[str, float] = {}
        for (name, *_), value in counters[pod].items():
            fields[TRITON_FIELDS[name]] = fields.get(TRITON_FIELDS[name], 0.0) + value
        gpu, p99 = gpus.get(pod), p99s.get(pod)
        out[pod] = TritonMetrics(**fields, request_p99_us=max(p99.values()) if p99 else None,
                                 gpu_utilization=sum(gpu.values()) / len(gpu) if gpu else None,
                                 sampled_at=sampled)
    return out


def redact(url: str) -> str:
    """The URL without credentials, query or fragment: what may be logged."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def _api_error(body: bytes) -> str:
    """Prometheus' own error text from an error answer, shortened."""
    try:
        detail = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        detail = ""
    return str(detail)[:300]


def query(url: str, promql: str, timeout: float) -> object:
    """POST an instant query to `url`'s /api/v1/query; the decoded JSON answer.

    `timeout` bounds the connection and each read, and is also sent as Prometheus' own
    evaluation timeout. Credentials in the URL (`https://user:pass@host`) become a Basic
    Authorization header. Raises PrometheusError with a loggable message on any failure.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PrometheusError(f"prometheus URL {redact(url)!r} is not http(s)://host[:port][/path]")
    endpoint = redact(url).rstrip("/") + "/api/v1/query"
    body = urllib.parse.urlencode({"query": promql, "timeout": f"{timeout:g}"}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        secret = urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()
    request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as e:
        detail = _api_error(e.read(64 * 1024))
        raise PrometheusError(f"HTTP {e.code} from {endpoint}" + (f": {detail}" if detail else "")) from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise PrometheusError(f"query to {endpoint} failed: {e}") from None
    if len(raw) > MAX_RESPONSE_BYTES:
        raise PrometheusError(f"answer from {endpoint} is larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError:
        raise PrometheusError(f"answer from {endpoint} is not JSON") from None


_failing: set[str] = set()  # redacted URLs whose last query failed: warn once, not every tick
_failing_lock = threading.Lock()


def _note(url: str, error: PrometheusError | None) -> None:
    """Log a failure at warning when it starts and at debug while it lasts; log the recovery."""
    key = redact(url)
    with _failing_lock:
        was = key in _failing
        if error is None:
            _failing.discard(key)
        else:
            _failing.add(key)
    if error is None:
        if was:
            log.info("prometheus %s answers again", key)
    elif was:
        log.debug("prometheus query still failing: %s", error)
    else:
        log.warning("prometheus query failed, metrics are missing until it answers: %s", error)


def pod_metrics(url: str, namespace: str, pods: Iterable[str], model: str, timeout: float = DEFAULT_TIMEOUT,
                max_age: float = DEFAULT_MAX_AGE) -> dict[str, TritonMetrics | None]:
    """Latest metrics per pod from the Prometheus at `url`; every pod None if the query fails."""
    requested = list(dict.fromkeys(pods))
    names = [p for p in requested if p]
    if not names:
        return dict.fromkeys(requested)
    try:
        answer = query(url, build_query(namespace, names, model), timeout)
        result = parse_response(answer, namespace, names, model, max_age)
    except PrometheusError as e:
        _note(url, e)
        return dict.fromkeys(requested)
    _note(url, None)
    return {p: result.get(p) for p in requested}
