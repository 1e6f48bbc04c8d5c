"""Render the Helm chart with the real (cached) helm binary, for the monitoring tests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from localcluster import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modeldeploy"
DASHBOARD = CHART / "dashboards" / "modeldeploy.json"
MONITORING_ON = ("podMonitor.enabled=true", "prometheusRule.enabled=true", "dashboards.enabled=true")


def helm() -> Path | None:
    """The cached helm binary (`make binaries` builds it), or None when it is not there."""
    path = binaries.path_of("helm")
    return path if os.access(path, os.X_OK) else None


def render(*sets: str) -> list[dict[str, Any]]:
    """`helm template` with these --set values: the rendered objects."""
    exe = helm()
    assert exe is not None, "helm is not cached: run `make binaries`"
    argv = [str(exe), "template", "md", str(CHART), "--namespace", "modeldeploy-system", "--kube-version", "1.35.4"]
    proc = subprocess.run([*argv, *[a for s in sets for a in ("--set", s)]], text=True, capture_output=True,
                          timeout=120)
    if proc.returncode != 0:
        raise AssertionError(proc.stdout + proc.stderr)
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The rendered objects of one kind."""
    return [d for d in docs if d["kind"] == kind]


def operator_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator's Deployment among the rendered objects (the activator has one too)."""
    (dep,) = [d for d in by_kind(docs, "Deployment")
              if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") != "activator"
              and not d["metadata"]["name"].endswith("-activator")]
    return dep


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard JSON as shipped in the chart."""
    return json.loads(DASHBOARD.read_text())


def panel_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel."""
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def alert_exprs(rule: dict[str, Any]) -> list[tuple[str, str]]:
    """(alert name, expr) of every rule in a PrometheusRule object."""
    return [(r.get("alert") or r.get("record", ""), r["expr"]) for g in rule["spec"]["groups"] for r in g["rules"]]


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana's `$name` and `${name}` template variables (longest names first)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    return expr
