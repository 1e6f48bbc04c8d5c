"""The Prometheus metrics source: PromQL building, answer parsing, staleness, errors -> missing data.

The HTTP boundary is a real loopback server answering canned Prometheus API JSON (no network);
tests/integration/test_prometheus_source.py runs the real Prometheus against a real Triton.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modeldeploy import config
from modeldeploy.metrics import prometheus
from modeldeploy.metrics.parse import TritonMetrics
from modeldeploy.metrics.prometheus import PrometheusError, build_query, parse_response, pod_metrics, regex_escape
from modeldeploy.metrics.source import MetricsSource, PrometheusSource, ScrapeSource, metrics_url, source_from_settings

NOW = 1_700_000_000.0


def series(name: str, value: float | str, pod: str = "pod-a", *, at: float = NOW, namespace: str = "ns1",
           **labels: str) -> dict[str, object]:
    """One element of a vector result, as Prometheus writes it (value as a string)."""
    metric = {"__name__": name, "namespace": namespace, "pod": pod, "job": "triton", "instance": "10.0.0.1:8002",
              **labels}
    return {"metric": metric, "value": [at, str(value)]}


def sampled(pod: str, age: float, namespace: str = "ns1") -> dict[str, object]:
    """The per-pod scrape time the query adds (no job/instance: it is aggregated by pod)."""
    return {"metric": {"__name__": prometheus.SAMPLE_TIME, "namespace": namespace, "pod": pod},
            "value": [NOW, str(NOW - age)]}


def answer(*result: dict[str, object]) -> dict[str, object]:
    return {"status": "success", "data": {"resultType": "vector", "result": list(result)}}


def digits_pod(pod: str, job: str = "triton") -> list[dict[str, object]]:
    """What Prometheus holds for one Triton pod serving `digits` v1 and v2 on two GPUs."""
    v1, v2 = {"model": "digits", "version": "1", "job": job}, {"model": "digits", "version": "2", "job": job}
    return [
        series("nv_inference_request_success", 90, pod, **v1),
        series("nv_inference_request_success", 10, pod, **v2),
        series("nv_inference_request_failure", 3, pod, reason="BACKEND", **v1),
        series("nv_inference_request_failure", 1, pod, reason="REJECTED", **v1),
        series("nv_inference_request_failure", 0, pod, reason="BACKEND", **v2),
        series("nv_inference_count", 400, pod, **v1),
        series("nv_inference_exec_count", 25, pod, **v1),
        series("nv_inference_request_duration_us", 1_040_000, pod, **v1),
        series("nv_inference_queue_duration_us", 520_000, pod, **v1),
        series("nv_inference_compute_infer_duration_us", 400_000, pod, **v1),
        series("nv_inference_pending_request_count", 7, pod, **v1),
        series("nv_gpu_utilization", 0.5, pod, gpu_uuid="GPU-1", job=job),
        series("nv_gpu_utilization", 0.7, pod, gpu_uuid="GPU-2", job=job),
    ]


DIGITS = TritonMetrics(success=100, failure=4, inferences=400, executions=25, request_duration_us=1_040_000,
                       queue_duration_us=520_000, compute_duration_us=400_000, pending=7,
                       gpu_utilization=pytest.approx(0.6))


# -- the query ---------------------------------------------------------------------------------------------------------


def _regex_of(promql: str, label: str) -> str:
    """The regex of `label=~"..."` in a query, unquoted as PromQL unquotes it."""
    literal = re.search(rf'{label}=~("(?:[^"\\]|\\.)*")', promql)
    assert literal, promql
    return json.loads(literal.group(1))


def test_regex_escape_quotes_every_re2_metacharacter() -> None:
    assert regex_escape(r"a.b+c*d?e(f)g|h[i]j{k}l^m$n\o") == r"a\.b\+c\*d\?e\(f\)g\|h\[i\]j\{k\}l\^m\$n\\o"
    assert regex_escape("digits-v2_x") == "digits-v2_x"


def test_query_selects_by_namespace_pod_and_model_with_escaped_names() -> None:
    q = build_query("ml", ["digits-7f9c.a", "digits-7f9c-b"], "my.model")
    assert 'namespace="ml"' in q and 'model="my.model"' in q
    pods = _regex_of(q, "pod")
    assert re.fullmatch(pods, "digits-7f9c.a") and re.fullmatch(pods, "digits-7f9c-b")
    assert not re.fullmatch(pods, "digits-7f9cXa")  # "." is literal
    assert not re.fullmatch(pods, "other-digits-7f9c-b")  # PromQL regexes are anchored; so is fullmatch
    model = _regex_of(q, "model")
    assert re.fullmatch(model, "my.model") and re.fullmatch(model, "") and not re.fullmatch(model, "myXmodel")
    names = _regex_of(q, "__name__")
    assert re.fullmatch(names, "nv_inference_request_failure") and re.fullmatch(names, "nv_gpu_utilization")
    assert not re.fullmatch(names, "nv_inference_request_summary_us_count")
    assert f'"__name__", "{prometheus.SAMPLE_TIME}"' in q and "timestamp(nv_inference_count{" in q


def test_query_string_literals_escape_quotes_and_backslashes() -> None:
    q = build_query('ns"x', ["p"], 'm\\"} or vector(1) #')
    assert 'namespace="ns\\"x"' in q
    assert 'model="m\\\\\\"} or vector(1) #"' in q  # stays inside the string: no injected PromQL


def test_a_query_for_no_pods_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one pod"):
        build_query("ns1", [], "m")


def parse(payload: object, namespace: str, pods: list[str], model: str, max_age: float) -> dict[str, object]:
    """parse_response with each pod's sample time checked apart (see test_the_sample_time_is_kept)."""
    got = parse_response(payload, namespace, pods, model, max_age)
    return {pod: None if m is None else dataclasses.replace(m, sampled_at=None) for pod, m in got.items()}


def test_the_sample_time_is_kept() -> None:
    got = parse_response(answer(*digits_pod("pod-a"), sampled("pod-a", 3)), "ns1", ["pod-a"], "digits", 60)
    assert got["pod-a"] is not None and got["pod-a"].sampled_at == NOW - 3


# -- parsing the answer ------------------------------------------------------------------------------------------------


def test_counters_are_summed_over_versions_and_reasons() -> None:
    got = parse(answer(*digits_pod("pod-a"), sampled("pod-a", 3)), "ns1", ["pod-a"], "digits", 60)
    assert got == {"pod-a": DIGITS}
    assert got["pod-a"] is not None and got["pod-a"].requests == 104


def test_a_pod_scraped_by_two_jobs_counts_once() -> None:
    result = [*digits_pod("pod-a", job="podmonitor"), *digits_pod("pod-a", job="servicemonitor"), sampled("pod-a", 1)]
    assert parse(answer(*result), "ns1", ["pod-a"], "digits", 60) == {"pod-a": DIGITS}


def test_a_pod_without_series_is_missing_not_zero() -> None:
    result = [*digits_pod("pod-a"), sampled("pod-a", 1),
              series("nv_gpu_utilization", 0.1, "pod-b", gpu_uuid="GPU-9"), sampled("pod-b", 1)]  # model not loaded
    got = parse(answer(*result), "ns1", ["pod-a", "pod-b", "pod-c"], "digits", 60)
    assert got == {"pod-a": DIGITS, "pod-b": None, "pod-c": None}
    assert parse(answer(), "ns1", ["pod-a"], "digits", 60) == {"pod-a": None}


def test_other_models_namespaces_and_pods_are_ignored() -> None:
    result = [
        *digits_pod("pod-a"), sampled("pod-a", 1),
        series("nv_inference_request_success", 1000, "pod-a", model="other", version="1"),
        series("nv_inference_request_success", 1000, "pod-a", namespace="ns2", model="digits", version="1"),
        series("nv_inference_request_success", 1000, "pod-z", model="digits", version="1"), sampled("pod-z", 1),
        series("nv_inference_request_summary_us_count", 1000, "pod-a", model="digits", version="1"),
    ]
    assert parse(answer(*result), "ns1", ["pod-a"], "digits", 60) == {"pod-a": DIGITS}


def test_stale_samples_are_dropped() -> None:
    result = [*digits_pod("fresh"), sampled("fresh", 29), *digits_pod("dead"), sampled("dead", 31)]
    got = parse(answer(*result), "ns1", ["fresh", "dead"], "digits", max_age=30)
    assert got == {"fresh": DIGITS, "dead": None}


def test_a_pod_without_a_sample_time_is_missing() -> None:
    assert parse(answer(*digits_pod("pod-a")), "ns1", ["pod-a"], "digits", 60) == {"pod-a": None}


def test_a_pod_without_gpus_has_no_utilization_and_nan_is_skipped() -> None:
    result = [series("nv_inference_request_success", 5, model="m", version="1"),
              series("nv_inference_request_failure", "NaN", model="m", version="1", reason="OTHER"),
              sampled("pod-a", 0)]
    assert parse(answer(*result), "ns1", ["pod-a"], "m", 60) == {"pod-a": TritonMetrics(success=5)}


@pytest.mark.parametrize("payload", [
    {"status": "error", "errorType": "bad_data", "error": "parse error"},
    {"status": "success", "data": {"resultType": "matrix", "result": []}},
    {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [NOW]}]}},
    {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [NOW, "x"]}]}},
    {"status": "success", "data": {"resultType": "vector", "result": ["nope"]}},
    ["not", "an", "object"],
])
def test_malformed_answers_raise(payload: object) -> None:
    with pytest.raises(PrometheusError):
        parse_response(payload, "ns1", ["pod-a"], "digits", 60)


# -- over HTTP (a loopback server) -------------------------------------------------------------------------------------


@dataclass
class FakeApi:
    """A loopback HTTP server answering every request with `status`, `body` after `delay` seconds."""

    port: int = 0
    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    content_type: str = "application/json"
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reply(self, payload: object, status: int = 200) -> None:
        self.status, self.body = status, json.dumps(payload).encode()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            fake.requests.append((self.command, self.path, dict(self.headers), self.rfile.read(length)))
            time.sleep(fake.delay)
            self.send_response(fake.status)
            self.send_header("Content-Type", fake.content_type)
            self.send_header("Content-Length", str(len(fake.body)))
            self.end_headers()
            self.wfile.write(fake.body)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


def test_one_post_per_call_with_the_query_in_the_body(api: FakeApi) -> None:
    api.reply(answer(*digits_pod("pod-a"), sampled("pod-a", 2)))
    got = pod_metrics(api.url + "/prom/", "ns1", ["pod-a", "pod-b"], "digits", timeout=2, max_age=60)
    assert got == {"pod-a": dataclasses.replace(DIGITS, sampled_at=NOW - 2), "pod-b": None}
    [(method, path, headers, body)] = api.requests
    assert (method, path) == ("POST", "/prom/api/v1/query")
    form = urllib.parse.parse_qs(body.decode())
    assert form["query"] == [build_query("ns1", ["pod-a", "pod-b"], "digits")] and form["timeout"] == ["2"]
    assert "Authorization" not in headers


def test_credentials_in_the_url_become_basic_auth_and_are_never_logged(
        api: FakeApi, caplog: pytest.LogCaptureFixture) -> None:
    api.reply({"status": "error", "errorType": "execution", "error": "query timed out"}, status=503)
    url = f"http://md:s3cr%40t@127.0.0.1:{api.port}"
    with caplog.at_level(logging.DEBUG, logger=prometheus.__name__):
        assert pod_metrics(url, "ns1", ["pod-a"], "digits") == {"pod-a": None}
    assert api.requests[0][2]["Authorization"] == "Basic bWQ6czNjckB0"  # md:s3cr@t
    assert "HTTP 503" in caplog.text and "query timed out" in caplog.text
    assert "s3cr" not in caplog.text and "md:" not in caplog.text
    assert "s3cr" not in repr(PrometheusSource(url))


@pytest.mark.parametrize("status,body,content_type", [
    (500, b'{"status":"error","errorType":"internal","error":"boom"}', "application/json"),
    (400, b'{"status":"error","errorType":"bad_data","error":"1:1: parse error"}', "application/json"),
    (200, b"<html>a login page</html>", "text/html"),
    (200, b'{"status":"success","data":{"resultType":"matrix","result":[]}}', "application/json"),
])
def test_errors_give_none_for_every_pod(api: FakeApi, status: int, body: bytes, content_type: str) -> None:
    api.status, api.body, api.content_type = status, body, content_type
    assert pod_metrics(api.url, "ns1", ["a", "b"], "digits") == {"a": None, "b": None}


def test_a_slow_prometheus_is_bounded_by_the_timeout(api: FakeApi) -> None:
    api.reply(answer(*digits_pod("pod-a"), sampled("pod-a", 1)))
    api.delay = 1.0
    began = time.monotonic()
    assert pod_metrics(api.url, "ns1", ["pod-a"], "digits", timeout=0.2) == {"pod-a": None}
    assert time.monotonic() - began < 0.9


def test_an_unreachable_prometheus_gives_none() -> None:
    from localcluster.process import free_port

    assert pod_metrics(f"http://127.0.0.1:{free_port()}", "ns1", ["a"], "m", timeout=0.5) == {"a": None}
    assert pod_metrics("prometheus:9090", "ns1", ["a"], "m") == {"a": None}  # no scheme: refused, not crashed


def test_a_lasting_failure_warns_once_then_recovers(api: FakeApi, caplog: pytest.LogCaptureFixture) -> None:
    api.reply({"status": "error", "errorType": "unavailable", "error": "down"}, status=503)
    with caplog.at_level(logging.DEBUG, logger=prometheus.__name__):
        for _ in range(3):
            pod_metrics(api.url, "ns1", ["a"], "m")
        api.reply(answer())
        pod_metrics(api.url, "ns1", ["a"], "m")
    levels = [r.levelname for r in caplog.records]
    assert levels == ["WARNING", "DEBUG", "DEBUG", "INFO"], levels


def test_no_pods_no_query(api: FakeApi) -> None:
    assert pod_metrics(api.url, "ns1", [], "m") == {}
    assert not api.requests


# -- sources and settings ----------------------------------------------------------------------------------------------


def test_scrape_source_reads_each_pods_metrics_port(api: FakeApi) -> None:
    api.status, api.content_type = 200, "text/plain"
    api.body = (b'nv_inference_request_success{model="digits",version="1"} 12\n'
                b'nv_inference_request_failure{model="digits",reason="BACKEND",version="1"} 2\n')
    source = ScrapeSource(timeout=1.0, port=api.port)
    got = source.pods("ns1", {"a": "127.0.0.1", "b": ""}, "digits")  # b has no IP yet
    assert got == {"a": TritonMetrics(success=12, failure=2), "b": None}
    assert api.requests[0][:2] == ("GET", "/metrics")


def test_metrics_url_brackets_ipv6() -> None:
    assert metrics_url("10.1.2.3") == "http://10.1.2.3:8002/metrics"
    assert metrics_url("fd00::1", 9) == "http://[fd00::1]:9/metrics"


def test_prometheus_source_answers_by_pod_name(api: FakeApi) -> None:
    api.reply(answer(*digits_pod("pod-a"), sampled("pod-a", 1)))
    source: MetricsSource = PrometheusSource(api.url, timeout=1.0, max_age=30)
    timed = dataclasses.replace(DIGITS, sampled_at=NOW - 1)
    assert source.pods("ns1", {"pod-a": "10.0.0.1", "pod-b": "10.0.0.2"}, "digits") == {"pod-a": timed, "pod-b": None}


def test_settings_pick_the_source() -> None:
    assert isinstance(source_from_settings(config.from_env({})), ScrapeSource)
    settings = config.from_env({"MD_METRICS_SOURCE": "Prometheus", "MD_PROMETHEUS_URL": "http://prom:9090"})
    source = source_from_settings(settings)
    assert isinstance(source, PrometheusSource) and source.url == "http://prom:9090"


@pytest.mark.parametrize("env,variable", [
    ({"MD_METRICS_SOURCE": "prometheus"}, "MD_PROMETHEUS_URL"),
    ({"MD_METRICS_SOURCE": "prometheus", "MD_PROMETHEUS_URL": "prom:9090"}, "MD_PROMETHEUS_URL"),
    ({"MD_METRICS_SOURCE": "statsd"}, "MD_METRICS_SOURCE"),
])
def test_settings_refuse_an_unusable_metrics_source(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ValueError, match=variable):
        config.from_env(env)
