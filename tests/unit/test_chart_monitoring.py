"""The chart's optional monitoring objects (PodMonitor, PrometheusRule, Grafana dashboard ConfigMap),
rendered by the real helm binary: present and well-formed when enabled, absent by default."""

from __future__ import annotations

import json
import re

import pytest

from modeldeploy import constants as c
from modeldeploy.resources.deployment import triton_args
from tests.support import chart

pytestmark = pytest.mark.skipif(chart.helm() is None, reason="helm is not cached (make binaries)")

MONITORING_KINDS = ("PodMonitor", "PrometheusRule")


def _dashboard_configmaps(docs: list[dict]) -> list[dict]:
    return [d for d in chart.by_kind(docs, "ConfigMap") if d["metadata"].get("labels", {}).get("grafana_dashboard")]


def test_off_by_default_renders_none() -> None:
    docs = chart.render()
    for kind in MONITORING_KINDS:
        assert not chart.by_kind(docs, kind), kind
    assert not _dashboard_configmaps(docs)


def test_each_flag_renders_only_its_object() -> None:
    assert [d["kind"] for d in chart.render("podMonitor.enabled=true") if d["kind"] in MONITORING_KINDS] == [
        "PodMonitor"]
    assert [d["kind"] for d in chart.render("prometheusRule.enabled=true") if d["kind"] in MONITORING_KINDS] == [
        "PrometheusRule"]
    docs = chart.render("dashboards.enabled=true")
    assert len(_dashboard_configmaps(docs)) == 1 and not [d for d in docs if d["kind"] in MONITORING_KINDS]


def test_podmonitor_selects_serving_pods_and_their_metrics_port() -> None:
    (pm,) = chart.by_kind(chart.render(*chart.MONITORING_ON), "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    spec = pm["spec"]
    # The labels every serving pod carries (resources/labels.py pod_labels); validation-Job pods
    # lack the name label and are not selected.
    assert spec["selector"]["matchLabels"] == {c.LABEL_MANAGED_BY: c.MANAGED_BY,
                                               c.LABEL_APP_COMPONENT: c.COMPONENT_SERVER}
    assert spec["selector"]["matchExpressions"] == [{"key": c.LABEL_NAME, "operator": "Exists"}]
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["podTargetLabels"] == [c.LABEL_NAME, c.LABEL_REVISION]
    (ep,) = spec["podMetricsEndpoints"]
    assert ep["port"] == c.PORT_NAME_METRICS and ep["interval"] == "2s"
    assert {"action": "replace", "targetLabel": "job", "replacement": "modeldeploy-triton"} in ep["relabelings"]
    # no relabeling drops or renames the namespace and pod target labels
    assert all(r.get("action") != "labeldrop" and r.get("targetLabel") not in ("namespace", "pod")
               for r in ep["relabelings"])


def test_podmonitor_namespaces_follow_watch_namespaces() -> None:
    (pm,) = chart.by_kind(chart.render("podMonitor.enabled=true", "watchNamespaces={ml,vision}"), "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml", "vision"]}
    (pm,) = chart.by_kind(chart.render("podMonitor.enabled=true", "podMonitor.namespaces={ml}",
                                       "podMonitor.interval=5s"), "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    assert pm["spec"]["podMetricsEndpoints"][0]["interval"] == "5s"


def test_prometheusrule_has_the_alerts() -> None:
    (rule,) = chart.by_kind(chart.render(*chart.MONITORING_ON, "prometheusRule.queueTimeMilliseconds=250",
                                         "prometheusRule.alertLabels.team=ml"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = dict(chart.alert_exprs(rule))
    assert set(alerts) == {"ModelDeploymentCanaryRolledBack", "ModelDeploymentFailed", "ModelDeploymentDegraded",
                           "ModelDeploymentSaturated", "ModelDeploymentTritonScrapeFailing"}
    assert 'modeldeploy_canary_outcomes_total{outcome="RolledBack"}' in alerts["ModelDeploymentCanaryRolledBack"]
    assert 'phase="Failed"' in alerts["ModelDeploymentFailed"]
    assert "nv_inference_queue_duration_us" in alerts["ModelDeploymentSaturated"]
    assert alerts["ModelDeploymentSaturated"].rstrip().endswith("> 250")
    assert alerts["ModelDeploymentTritonScrapeFailing"] == 'up{job="modeldeploy-triton"} == 0'
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert r["labels"]["severity"] in ("warning", "critical") and r["labels"]["team"] == "ml"
            assert r["annotations"]["summary"]
            if "for" in r:
                assert re.fullmatch(r"[0-9]+[smh]", r["for"])


def test_dashboard_configmap_carries_the_dashboard_file() -> None:
    (cm,) = _dashboard_configmaps(chart.render(*chart.MONITORING_ON))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "modeldeploy-system"
    assert json.loads(cm["data"]["modeldeploy.json"]) == chart.dashboard()
    (cm,) = _dashboard_configmaps(chart.render("dashboards.enabled=true", "dashboards.namespace=monitoring"))
    assert cm["metadata"]["namespace"] == "monitoring"


def test_dashboard_panels_each_have_a_query_over_the_template_variables() -> None:
    dash = chart.dashboard()
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "namespace", "model"} <= variables
    assert dash["panels"] and len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for panel in dash["panels"]:
        exprs = [t.get("expr", "") for t in panel.get("targets", [])]
        assert exprs and all(e.strip() for e in exprs), panel["title"]
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for needed in ("request", "error", "latency", "queue", "batch", "replicas", "canary weight"):
        assert needed in titles, needed
    # The latency panel is a mean and says so (the canary analysis reads Triton's p99 summary,
    # which the pods export since triton_args() sets summary_latencies, but the panel does not).
    assert "--metrics-config=summary_latencies=true" in triton_args()
    assert all("quantile" not in e for _, e in chart.panel_exprs(dash))
    assert any("mean" in p["title"].lower() and "latency" in p["title"].lower() for p in dash["panels"])
