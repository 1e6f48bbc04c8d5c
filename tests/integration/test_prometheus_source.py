"""The Prometheus metrics source against a real Prometheus really scraping a real Triton.

A tritonserver serves a tiny python model at two versions (one that fails on negative input),
and Debian's /usr/bin/prometheus scrapes its metrics port every second with the target labels a
PodMonitor gives (`namespace: ns1, pod: pod-a`). After real requests, `PrometheusSource` must
report exactly what Triton's own /metrics says (read by `ScrapeSource`), and nothing for pods,
namespaces or models it does not have. Then Prometheus restarts without the target: its last
samples stay answerable but age for real, and `max_age` turns them into missing data.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from localcluster.process import free_port
from modeldeploy.loader.repository import with_sys_path
from modeldeploy.metrics import prometheus
from modeldeploy.metrics.parse import TritonMetrics
from modeldeploy.metrics.source import PrometheusSource, ScrapeSource
from tests.support import serving
from tests.support.prometheus import Prometheus, wait_for
from tests.support.serving_models import FAILING_ECHO_MODEL_PY

PROMETHEUS = Path("/usr/bin/prometheus")  # Debian's package (hack/setup-system.sh)
pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not os.access(PROMETHEUS, os.X_OK), reason=f"{PROMETHEUS} missing (hack/setup-system.sh installs it)")]
NAMESPACE, POD, MODEL = "ns1", "pod-a", "echo"



CONFIG = f'''name: "{MODEL}"
backend: "python"
max_batch_size: 8
version_policy: {{ all: {{}} }}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
'''

@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[serving.TritonServer]:
    work = tmp_path_factory.mktemp("triton")
    stub_site = serving.triton_install().stub_site
    model_dir = work / "repo" / MODEL
    model_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(CONFIG)
    for version in ("1", "2"):
        (model_dir / version).mkdir()
        (model_dir / version / "model.py").write_text(with_sys_path(FAILING_ECHO_MODEL_PY, (stub_site,)))
    with serving.running(work / "repo", work / "triton.log") as server:
        yield server


def _scrape_configs(metrics_port: int | None) -> str:
    """Triton's metrics port with the target labels a PodMonitor gives (nothing at all with None)."""
    if metrics_port is None:
        return ""
    return f"""\
  - job_name: triton
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
        labels: {{namespace: {NAMESPACE}, pod: {POD}}}
"""


@pytest.fixture(scope="module")
def prom(triton: serving.TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), free_port())
    try:
        server.start(_scrape_configs(triton.metrics_port))
        yield server
    finally:
        server.stop()


def _infer(client: object, x: np.ndarray, version: str = "", name: str = "x") -> bool:
    """One request; True when Triton answered it."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        client.infer(MODEL, [inp], model_version=version)  # type: ignore[attr-defined]
    except InferenceServerException:
        return False
    return True


def _untimed(m: TritonMetrics | None) -> TritonMetrics | None:
    """Prometheus adds when it scraped (sampled_at); a direct read is "now" (None)."""
    return None if m is None else dataclasses.replace(m, sampled_at=None)


def _direct(triton: serving.TritonServer) -> TritonMetrics:
    got = ScrapeSource(timeout=5.0, port=triton.metrics_port).pods(NAMESPACE, {POD: "127.0.0.1"}, MODEL)[POD]
    assert got is not None, "Triton's own /metrics did not answer"
    return got


def test_prometheus_reports_what_triton_counts(triton: serving.TritonServer, prom: Prometheus) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton.http_url)
    ok, bad = np.ones((1, 4), np.float32), -np.ones((1, 4), np.float32)
    try:
        answered = [_infer(client, ok, "1") for _ in range(6)] + [_infer(client, ok, "2") for _ in range(4)]
        failed = [_infer(client, bad) for _ in range(3)]  # the model raises: counted as failures
        refused = [_infer(client, ok, name="wrong") for _ in range(2)]  # refused before the model: not counted
    finally:
        client.close()  # an open keep-alive connection holds tritonserver's shutdown for up to 30s
    assert all(answered) and not any(failed) and not any(refused)

    direct = _direct(triton)
    assert (direct.success, direct.failure, direct.inferences, direct.executions) == (10, 3, 10, 13)
    assert direct.gpu_utilization is None  # CPU only

    source = PrometheusSource(prom.url, timeout=5.0, max_age=30.0)
    began = time.monotonic()
    seen: list[dict[str, TritonMetrics | None]] = []

    def caught_up() -> dict[str, TritonMetrics | None] | None:
        seen.append(source.pods(NAMESPACE, {POD: "127.0.0.1", "pod-unknown": "127.0.0.2"}, MODEL))
        return seen[-1] if _untimed(seen[-1][POD]) == direct else None

    try:
        got = wait_for(caught_up, 30, "Prometheus reports Triton's counters")
    except AssertionError:
        raise AssertionError(f"last answer {seen[-1] if seen else None}; prometheus log:\n{prom.log()}") from None
    print(f"\nPrometheus had Triton's counters {time.monotonic() - began:.1f}s after the requests: {got[POD]}")
    assert {pod: _untimed(m) for pod, m in got.items()} == {POD: direct, "pod-unknown": None}
    assert got[POD] is not None and got[POD].sampled_at is not None  # the scrape's time, for rates


def test_unknown_pod_namespace_or_model_is_missing(triton: serving.TritonServer, prom: Prometheus) -> None:
    source = PrometheusSource(prom.url, timeout=5.0, max_age=30.0)
    wait_for(lambda: source.pods(NAMESPACE, {POD: ""}, MODEL)[POD], 30, "pod-a scraped")
    assert source.pods("ns2", {POD: "127.0.0.1"}, MODEL) == {POD: None}
    assert source.pods(NAMESPACE, {POD: "127.0.0.1"}, "not-served") == {POD: None}
    assert source.pods(NAMESPACE, {"pod-b": "127.0.0.1"}, MODEL) == {"pod-b": None}


def test_escaped_names_are_valid_promql(prom: Prometheus) -> None:
    """Names full of regex and string metacharacters still make a query Prometheus accepts."""
    pods = ["a.b", 'q"uote', "back\\slash", "(x|y)*"]
    promql = prometheus.build_query('n"s\\', pods, 'm"o\\del|.*')
    answer = prometheus.query(prom.url, promql, 5.0)
    assert answer["status"] == "success", answer  # type: ignore[index]
    assert prometheus.parse_response(answer, 'n"s\\', pods, 'm"o\\del|.*', 30) == dict.fromkeys(pods)


def test_samples_older_than_max_age_are_missing(triton: serving.TritonServer, prom: Prometheus) -> None:
    """The pod goes away while Prometheus restarts: no staleness markers are written, so its last
    samples stay answerable for the 5-minute lookback (up == 1 included). They age for real, and
    past max_age they are missing data; a lenient max_age still returns them."""
    direct = _direct(triton)
    lenient = PrometheusSource(prom.url, timeout=5.0, max_age=600.0)
    strict = PrometheusSource(prom.url, timeout=5.0, max_age=2.0)
    wait_for(lambda: strict.pods(NAMESPACE, {POD: ""}, MODEL)[POD], 30, "a fresh scrape")
    prom.stop()
    try:
        prom.start(_scrape_configs(None))  # the same TSDB, no target any more
        assert _untimed(lenient.pods(NAMESPACE, {POD: ""}, MODEL)[POD]) == direct  # the last values, still answered
        stopped = time.monotonic()
        wait_for(lambda: True if strict.pods(NAMESPACE, {POD: ""}, MODEL)[POD] is None else None, 30,
                 "samples older than 2s dropped")
        assert time.monotonic() - stopped < 5
        assert _untimed(lenient.pods(NAMESPACE, {POD: ""}, MODEL)[POD]) == direct
    finally:
        prom.stop()
        prom.start(_scrape_configs(triton.metrics_port))  # as the module found it, for any test after this one
