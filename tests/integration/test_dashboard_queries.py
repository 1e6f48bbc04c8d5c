"""The Grafana dashboard's queries and the PrometheusRule's alerts against a real Prometheus.

A real tritonserver serves a python model (failing on negative input, dynamic batching), scraped
every second by Debian's /usr/bin/prometheus with the target labels the chart's PodMonitor gives
(job modeldeploy-triton; namespace, pod, modeldeploy_io_name, modeldeploy_io_revision). Prometheus
also scrapes the operator's own metrics, served by prometheus_client from modeldeploy.telemetry's
REGISTRY in this process, with the target labels and honor_labels of the chart's ServiceMonitor
(honored: the metrics' own `namespace`, the ModelDeployment's, wins). After real requests,
every panel query (template variables substituted) must return data, every alert expression must
be valid PromQL, and `promtool check rules` must accept the PrometheusRule's groups.
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
import yaml
from prometheus_client import start_http_server

from localcluster.process import free_port
from modeldeploy import telemetry
from modeldeploy.loader.repository import with_sys_path
from tests.support import chart, serving
from tests.support.prometheus import PROMETHEUS, PROMTOOL, Prometheus, promtool_check_rules, wait_for
from tests.support.serving_models import FAILING_ECHO_MODEL_PY

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(PROMETHEUS, os.X_OK) or not os.access(PROMTOOL, os.X_OK),
                       reason=f"{PROMETHEUS} / {PROMTOOL} missing (hack/setup-system.sh installs them)"),
    pytest.mark.skipif(chart.helm() is None, reason="helm is not cached (make binaries)"),
]

NAMESPACE, MD_NAME, REVISION, POD = "ns1", "echo-md", "7f9c2d", "echo-md-7f9c2d-0"
MODEL = "echo"  # Triton's model name differs from the ModelDeployment's: panels select by pod label
OPERATOR_NAMESPACE = "modeldeploy-system"
RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval stands for here


CONFIG = f'''name: "{MODEL}"
backend: "python"
max_batch_size: 8
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
'''


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[serving.TritonServer]:
    """A real tritonserver serving the echo model at version 1."""
    work = tmp_path_factory.mktemp("triton")
    model_dir = work / "repo" / MODEL
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(CONFIG)
    stub_site = serving.triton_install().stub_site
    (model_dir / "1" / "model.py").write_text(with_sys_path(FAILING_ECHO_MODEL_PY, (stub_site,)))
    with serving.running(work / "repo", work / "triton.log") as server:
        yield server


@pytest.fixture(scope="module")
def operator_metrics() -> Iterator[int]:
    """The operator's real metrics registry on a loopback port, with a canary in progress."""
    port = free_port()
    started = start_http_server(port, addr="127.0.0.1", registry=telemetry.REGISTRY)
    telemetry.record_phase(NAMESPACE, MD_NAME, "Degraded")
    telemetry.record_canary(NAMESPACE, MD_NAME, "Progressing", 25, 1)
    telemetry.CANARY_OUTCOMES.labels(outcome="RolledBack").inc()  # as the reconciler does on a rollback
    try:
        yield port
    finally:
        telemetry.record_canary(NAMESPACE, MD_NAME, "Promoted", 0, 0)
        telemetry.record_phase(NAMESPACE, MD_NAME, None)
        if isinstance(started, tuple):  # prometheus_client >= 0.20 returns (server, thread)
            started[0].shutdown()


@pytest.fixture(scope="module")
def prom(triton: serving.TritonServer, operator_metrics: int,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus scraping Triton as the PodMonitor would and the operator as the ServiceMonitor would."""
    (pm,) = chart.by_kind(chart.render(*chart.MONITORING_ON), "PodMonitor")
    relabelings = pm["spec"]["podMetricsEndpoints"][0]["relabelings"]
    (job,) = [r["replacement"] for r in relabelings if r["targetLabel"] == "job"]
    (sm,) = chart.by_kind(chart.render("serviceMonitor.enabled=true"), "ServiceMonitor")
    honor = "true" if sm["spec"]["endpoints"][0].get("honorLabels") else "false"
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), free_port())
    try:
        server.start(f"""\
  - job_name: {job}
    static_configs:
      - targets: ["127.0.0.1:{triton.metrics_port}"]
        labels: {{namespace: {NAMESPACE}, pod: {POD},
                  modeldeploy_io_name: {MD_NAME}, modeldeploy_io_revision: "{REVISION}"}}
  - job_name: modeldeploy-operator
    honor_labels: {honor}
    static_configs:
      - targets: ["127.0.0.1:{operator_metrics}"]
        labels: {{namespace: {OPERATOR_NAMESPACE}, pod: modeldeploy-operator-0}}
""")
        yield server
    finally:
        server.stop()


def _rule() -> dict[str, Any]:
    (rule,) = chart.by_kind(chart.render(*chart.MONITORING_ON), "PrometheusRule")
    return rule


def _send_load(triton: serving.TritonServer) -> tuple[int, int]:
    """Real requests, concurrent so dynamic batching batches some: (answered, failed)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    def one(x: np.ndarray) -> bool:
        client = httpclient.InferenceServerClient(triton.http_url)
        try:
            inp = httpclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            client.infer(MODEL, [inp])
            return True
        except InferenceServerException:
            return False
        finally:
            client.close()  # an open keep-alive connection holds tritonserver's shutdown

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, [np.ones((1, 4), np.float32)] * 40))
    # One at a time: a model that raises fails its whole batch, and Triton counts a per-request
    # error response as a success, so only a lone raising request is one counted failure.
    results += [one(-np.ones((1, 4), np.float32)) for _ in range(4)]
    return sum(results), len(results) - sum(results)


def _variables() -> dict[str, str]:
    return {"namespace": NAMESPACE, "model": MD_NAME, "__rate_interval": RATE_INTERVAL,
            "datasource": "prometheus"}


def test_every_panel_query_returns_data_and_every_alert_parses(triton: serving.TritonServer,
                                                               prom: Prometheus) -> None:
    wait_for(lambda: True if set(prom.target_health().values()) == {"up"} and len(prom.target_health()) == 2
             else None, 60, "both targets scraped")  # so rates see the requests as an increase
    began = time.monotonic()
    answered, failed = _send_load(triton)
    assert (answered, failed) == (40, 4)
    queries = [(title, chart.substitute(expr, _variables())) for title, expr in chart.panel_exprs(chart.dashboard())]
    assert all("$" not in q for _, q in queries), queries

    answers: dict[str, dict[str, Any]] = {}

    def all_have_data() -> bool | None:
        answers.clear()
        answers.update({q: prom.query(q) for _, q in queries})
        if not all(a.get("data", {}).get("result") for a in answers.values()):
            return None
        return True if all(math.isfinite(float(r["value"][1])) for a in answers.values()
                           for r in a["data"]["result"]) else None  # NaN: the requests not yet in a rate

    try:
        wait_for(all_have_data, 60, "every panel query returns data, all finite")
    except AssertionError:
        empty = {t: answers.get(q) for t, q in queries if not answers.get(q, {}).get("data", {}).get("result")}
        raise AssertionError(f"panels without data: {empty}\ntargets: {prom.target_health()}\n{prom.log()}") from None
    print(f"\nevery panel query had data {time.monotonic() - began:.1f}s after the requests")

    def value(title_part: str) -> float:
        q = next(q for t, q in queries if title_part in t)
        return float(answers[q]["data"]["result"][0]["value"][1])

    assert value("Canary weight") == 25.0
    assert value("Replicas ready") == 1.0
    assert 0 < value("Error rate") < 1
    assert value("Average batch size") >= 1.0
    for _, q in queries:
        assert answers[q]["status"] == "success" and answers[q]["data"]["resultType"] == "vector", answers[q]
        for series in answers[q]["data"]["result"]:
            assert series["metric"].get("modeldeploy_io_revision", REVISION) == REVISION

    # The dashboard's namespace and model variables list what the PodMonitor's labels give.
    for var in chart.dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        metric, label = var["definition"].removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        got = prom.api(f"label/{label}/values", {"match[]": chart.substitute(metric, _variables())})
        assert got["status"] == "success" and got["data"] == [_variables()[var["name"]]], (var["name"], got)

    # Every alert expression is valid PromQL that Prometheus evaluates without error.
    alerts = chart.alert_exprs(_rule())
    for name, expr in alerts:
        got = prom.query(expr)
        assert got["status"] == "success", (name, got)
    firing = {name for name, expr in alerts if prom.query(expr)["data"]["result"]}
    # A first rollback (a counter series new to Prometheus) and a Degraded ModelDeployment show up
    # (before their `for:`); a healthy, lightly loaded Triton does not.
    assert firing == {"ModelDeploymentCanaryRolledBack", "ModelDeploymentDegraded"}, firing


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    rules = tmp_path / "modeldeploy.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": _rule()["spec"]["groups"]}, sort_keys=False))
    proc = promtool_check_rules(rules)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 5 rules found" in proc.stdout, proc.stdout
