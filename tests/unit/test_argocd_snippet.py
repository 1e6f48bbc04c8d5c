"""docs/argocd-health.yaml is generated from charts/modeldeploy/argocd/health.lua: a stale copy fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "charts" / "modeldeploy" / "argocd" / "health.lua"
SNIPPET = ROOT / "docs" / "argocd-health.yaml"
KEY = "resource.customizations.health.modeldeploy.io_ModelDeployment"


def test_argocd_snippet_is_in_sync() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "hack" / "gen_argocd_snippet.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_snippet_holds_the_lua_verbatim() -> None:
    cm = yaml.safe_load(SNIPPET.read_text())
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"][KEY] == LUA.read_text().rstrip("\n") + "\n"


def test_lua_uses_no_library_argocd_does_not_load() -> None:
    """Argo CD opens only the base, table and a safe os library for health checks."""
    code = "\n".join(line.split("--", 1)[0] for line in LUA.read_text().splitlines())
    for lib in ("string.", "math.", "io.", "debug.", ":sub(", ":format(", ":find(", ":match("):
        assert lib not in code, f"health.lua uses {lib!r}, which Argo CD's health Lua VM does not provide"
