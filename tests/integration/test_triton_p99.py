"""The canary's p99 comes from a real tritonserver started with the pods' generated arguments.

Two real tritonservers serve the same three python models: `fast` (answers at once, raises on
negative input), `steady` (40 ms a request) and `tail` (40 ms, but every 50th request 200 ms: a
2% slow tail that barely moves the mean). One runs with the Triton arguments the operator
generates (`triton_args()`: `--metrics-config=summary_latencies=true` ...), the other without
them, as an image or a pod without latency summaries would. The same real requests go to both.

With the generated arguments, Triton exports `nv_inference_request_summary_us{quantile="0.99"}`,
the slower model has the higher p99, and the analysis chain (scrape -> parse ->
revision_counters -> judge) fails the tail against the steady model on its p99 although its mean
is within maxLatencyRatio; without them the p99 is None and the analysis falls back to means,
saying so. A real Prometheus scraping the first server gives the same p99 through
PrometheusSource. Last, the p99 is watched going away once no request is left in Triton's sliding
window (measured: 48-60 s), which is why the analysis treats it as a recent p99, not the
interval's. No mocks: real processes, real HTTP, real requests.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from localcluster.process import free_port
from modeldeploy import constants
from modeldeploy.loader.repository import with_sys_path
from modeldeploy.metrics.parse import REQUEST_SUMMARY, TritonMetrics, parse
from modeldeploy.metrics.source import PrometheusSource, ScrapeSource
from modeldeploy.reconciler import revision_counters
from modeldeploy.resources.deployment import triton_args
from modeldeploy.rollout.analysis import Counters, Thresholds, Verdict, judge
from tests.support import serving
from tests.support.prometheus import PROMETHEUS, Prometheus, wait_for
from tests.support.serving_models import FAILING_ECHO_MODEL_PY

pytestmark = [pytest.mark.integration]

NAMESPACE, POD = "ns1", "pod-a"
BASE_S, SLOW_S, SLOW_EVERY = 0.04, 0.2, 50
REQUESTS = 200  # per model: 4 slow ones in `tail`, ranks 197-200 of 200, so its p99 is slow
THRESHOLDS = Thresholds(50, 0.01, 1.25, None)  # the CRD's defaults

SLEEPY_MODEL_PY = '''
import time
import triton_python_backend_utils as pb_utils

BASE_S, SLOW_S, SLOW_EVERY = {base}, {slow}, {every}


class TritonPythonModel:
    def initialize(self, args):
        self.n = 0

    def execute(self, requests):
        out = []
        for r in requests:
            self.n += 1
            time.sleep(SLOW_S if SLOW_EVERY and self.n % SLOW_EVERY == 0 else BASE_S)
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return out
'''

CONFIG = '''name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
'''

MODELS = {
    "fast": FAILING_ECHO_MODEL_PY,
    "steady": SLEEPY_MODEL_PY.format(base=BASE_S, slow=BASE_S, every=0),
    "tail": SLEEPY_MODEL_PY.format(base=BASE_S, slow=SLOW_S, every=SLOW_EVERY),
}

# What tests/support/serving.running() sets itself (paths, ports, the same hardening flags).
_SET_BY_THE_TEST_SERVER = frozenset({
    "--model-repository", "--model-control-mode", "--strict-readiness", "--allow-sagemaker",
    "--allow-vertex-ai", "--exit-on-error", "--http-port", "--grpc-port", "--metrics-port",
})


def generated_extra_args() -> tuple[str, ...]:
    """The pods' generated Triton arguments that the test server does not already set."""
    return tuple(a for a in triton_args() if a.split("=", 1)[0] not in _SET_BY_THE_TEST_SERVER)


def _repository(root: Path) -> Path:
    stub_site = serving.triton_install().stub_site
    for name, source in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name))
        (root / name / "1" / "model.py").write_text(with_sys_path(source, (stub_site,)))
    return root


def _traffic(server: serving.TritonServer, model: str, n: int, failing: int = 0) -> None:
    """`n` sequential requests (and `failing` the model raises on); the client lives in this thread."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        for i in range(n + failing):
            x = np.full((1, 4), -1.0 if i >= n else 1.0, np.float32)
            inp = httpclient.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            try:
                client.infer(model, [inp])
            except InferenceServerException:
                assert i >= n, f"{model}: request {i} failed"
    finally:
        client.close()  # an open keep-alive connection holds tritonserver's shutdown


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Both servers, after the same traffic to each; 'done' is when the last request ended."""
    work = tmp_path_factory.mktemp("p99")
    extra = generated_extra_args()
    assert "--metrics-config=summary_latencies=true" in extra, extra
    with serving.running(_repository(work / "with"), work / "with.log", extra) as with_summaries, \
            serving.running(_repository(work / "without"), work / "without.log") as without:
        with ThreadPoolExecutor(max_workers=2 * len(MODELS)) as pool:
            sent = [pool.submit(_traffic, s, m, REQUESTS, 3 if m == "fast" else 0)
                    for s in (with_summaries, without) for m in MODELS]
            for f in sent:
                f.result(timeout=120)  # re-raises a failed request here
        yield {"with": with_summaries, "without": without, "done": time.monotonic()}


def _scrape(server: serving.TritonServer, model: str) -> TritonMetrics:
    got = ScrapeSource(timeout=5.0, port=server.metrics_port).pods(NAMESPACE, {POD: "127.0.0.1"}, model)[POD]
    assert got is not None, "Triton's own /metrics did not answer"
    return got


def _revision(server: serving.TritonServer, model: str) -> Counters:
    """One 'revision' = one model on one pod, read the way the reconciler reads a revision."""
    pod = {"metadata": {"name": POD, "labels": {constants.LABEL_REVISION: model}},
           "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}}
    got = revision_counters(ScrapeSource(timeout=5.0, port=server.metrics_port), [pod], model, model, NAMESPACE)
    assert got is not None
    return got.minus(Counters())  # the first window of a step: everything since the pod started


def test_generated_args_export_the_p99_summary(servers: dict[str, Any]) -> None:
    text = servers["with"].metrics()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    summary = families[REQUEST_SUMMARY]
    assert summary.type == "summary"
    quantiles: dict[str, set[str]] = {}
    count: dict[str, float] = {}
    for s in summary.samples:
        if s.name == REQUEST_SUMMARY:
            quantiles.setdefault(s.labels["model"], set()).add(s.labels["quantile"])
        elif s.name == REQUEST_SUMMARY + "_count":
            count[s.labels["model"]] = s.value
    # As the generated summary_quantiles asks, the label written exactly as the PromQL query matches it.
    assert quantiles == {m: {"0.5", "0.9", "0.95", "0.99"} for m in MODELS}, quantiles
    # Failed requests are not observed: the summary counts what nv_inference_request_success counts.
    fast = _scrape(servers["with"], "fast")
    assert (fast.success, fast.failure) == (REQUESTS, 3)
    assert count == dict.fromkeys(MODELS, float(REQUESTS)), count
    assert REQUEST_SUMMARY not in servers["without"].metrics()


def test_the_slower_model_has_the_higher_p99(servers: dict[str, Any]) -> None:
    p99 = {m: _scrape(servers["with"], m).request_p99_us for m in MODELS}
    print(f"\np99 (us) with the generated args: {p99}")
    assert all(v is not None for v in p99.values()), p99
    fast, steady, tail = p99["fast"], p99["steady"], p99["tail"]
    assert fast is not None and steady is not None and tail is not None
    assert fast < steady < tail
    assert steady >= BASE_S * 1e6 and tail >= SLOW_S * 1e6  # Triton's request duration includes the model's time
    assert all(_scrape(servers["without"], m).request_p99_us is None for m in MODELS)


def test_the_analysis_fails_a_slow_tail_on_its_p99_and_falls_back_to_means_without(
        servers: dict[str, Any]) -> None:
    canary, stable = _revision(servers["with"], "tail"), _revision(servers["with"], "steady")
    mean_ratio = canary.mean_latency_s / stable.mean_latency_s
    print(f"\nmean ratio {mean_ratio:.3f}, p99 {canary.p99_us} vs {stable.p99_us} us")
    assert mean_ratio < THRESHOLDS.max_latency_ratio  # the mean hides a 2% tail
    a = judge(canary, stable, THRESHOLDS)
    assert a.verdict == Verdict.FAIL and a.reason.startswith("p99 latency "), a
    assert a.p99_ratio is not None and a.p99_ratio > THRESHOLDS.max_latency_ratio and a.latency_ratio is None
    assert "p99Ratio" in a.to_dict("t") and "latencyRatio" not in a.to_dict("t")
    assert judge(_revision(servers["with"], "steady"), stable, THRESHOLDS).verdict == Verdict.PASS

    # The same traffic on a Triton without summaries: no p99, judged on means, and said so.
    canary, stable = _revision(servers["without"], "tail"), _revision(servers["without"], "steady")
    assert canary.p99_us is None and stable.p99_us is None and canary.requests == REQUESTS
    a = judge(canary, stable, THRESHOLDS)
    assert a.verdict == Verdict.PASS and a.reason.endswith("(no p99 from Triton)"), a
    assert a.latency_ratio is not None and a.p99_ratio is None


@pytest.mark.skipif(not os.access(PROMETHEUS, os.X_OK), reason=f"{PROMETHEUS} missing (hack/setup-system.sh)")
def test_prometheus_gives_the_same_p99(servers: dict[str, Any], tmp_path: Path) -> None:
    server: serving.TritonServer = servers["with"]
    prom = Prometheus(tmp_path, free_port())
    try:
        prom.start(f"""\
  - job_name: triton
    static_configs:
      - targets: ["127.0.0.1:{server.metrics_port}"]
        labels: {{namespace: {NAMESPACE}, pod: {POD}}}
""")
        source = PrometheusSource(prom.url, timeout=5.0, max_age=30.0)
        direct = _scrape(server, "tail")

        def same() -> TritonMetrics | None:
            got = source.pods(NAMESPACE, {POD: ""}, "tail")[POD]
            return got if got is not None and got.request_p99_us == direct.request_p99_us else None

        got = wait_for(same, 30, "Prometheus has Triton's p99")
        assert got.success == direct.success and got.request_p99_us is not None
    finally:
        prom.stop()


def test_the_p99_leaves_with_triton_s_sliding_window(servers: dict[str, Any]) -> None:
    """No request since the traffic: the p99 goes from a value to None (NaN in Triton's text)
    48-60 s after the last request, while the counters stay."""
    server: serving.TritonServer = servers["with"]
    assert _scrape(server, "tail").request_p99_us is not None
    while (m := _scrape(server, "tail")).request_p99_us is not None:
        assert time.monotonic() - servers["done"] < 75, "the p99 outlived Triton's 60 s window"
        time.sleep(0.5)
    gone = time.monotonic() - servers["done"]
    print(f"\nthe p99 went away {gone:.1f}s after the last request")
    assert 45 <= gone <= 62, gone
    assert m.success == REQUESTS
    assert any(s.name == REQUEST_SUMMARY and s.labels.get("quantile") == "0.99" and math.isnan(s.value)
               for f in text_string_to_metric_families(server.metrics()) for s in f.samples
               if s.labels.get("model") == "tail")
    assert parse(server.metrics(), "tail").request_p99_us is None
