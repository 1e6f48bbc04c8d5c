"""Generate docs/argocd-health.yaml (an argocd-cm fragment) from charts/modeldeploy/argocd/health.lua.

The Lua file is the one source of truth for the Argo CD health check of ModelDeployment.
Usage: python hack/gen_argocd_snippet.py [--check]   (--check exits 1 when the generated file is stale)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from generated import write_or_check

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "charts" / "modeldeploy" / "argocd" / "health.lua"
TARGET = ROOT / "docs" / "argocd-health.yaml"
KEY = "resource.customizations.health.modeldeploy.io_ModelDeployment"
HEADER = f"""\
# GENERATED from charts/modeldeploy/argocd/health.lua by hack/gen_argocd_snippet.py: edit the .lua file,
# then run `python hack/gen_argocd_snippet.py`.
#
# Argo CD health check for modeldeploy.io/ModelDeployment (see docs/gitops.md). Merge it into the
# argocd-cm ConfigMap of your Argo CD installation, for example:
#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file docs/argocd-health.yaml
# or, with Argo CD's Helm chart, put the key under configs.cm in its values:
#   configs:
#     cm:
#       {KEY}: |
#         <the Lua below>
"""


def render(lua: str) -> str:
    """The argocd-cm ConfigMap fragment holding `lua` as a literal block under KEY."""
    if "\t" in lua:
        raise SystemExit(f"{SOURCE.relative_to(ROOT)}: use spaces, not tabs (YAML block scalars forbid tabs)")
    lines = lua.rstrip("\n").split("\n")
    if not lines[0].strip() or lines[0] != lines[0].lstrip():
        raise SystemExit(f"{SOURCE.relative_to(ROOT)}: must start with an unindented line (YAML block indentation)")
    if any(line != line.rstrip() for line in lines):
        raise SystemExit(f"{SOURCE.relative_to(ROOT)}: remove trailing whitespace (it would not round-trip)")
    body = "\n".join(f"    {line}" if line else "" for line in lines)
    return (
        HEADER
        + "apiVersion: v1\n"
        + "kind: ConfigMap\n"
        + "metadata:\n"
        + "  name: argocd-cm\n"
        + "  namespace: argocd\n"
        + "  labels:\n"
        + "    app.kubernetes.io/name: argocd-cm\n"
        + "    app.kubernetes.io/part-of: argocd\n"
        + "data:\n"
        + f"  {KEY}: |\n"
        + body
        + "\n"
    )


def main() -> int:
    """Write docs/argocd-health.yaml, or with --check report whether it is stale."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when the generated file is stale")
    args = parser.parse_args()
    return write_or_check(TARGET, render(SOURCE.read_text()), check=args.check,
                          remedy="python hack/gen_argocd_snippet.py", root=ROOT)


if __name__ == "__main__":
    sys.exit(main())
