"""Generate charts/modeldeploy/templates/crds.yaml from crds/ (the one source of truth).

Usage: python hack/sync_chart_crds.py [--check]   (--check exits 1 when the chart's copy is stale)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from generated import write_or_check

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "crds"
TARGET = ROOT / "charts" / "modeldeploy" / "templates" / "crds.yaml"
HEADER = "# GENERATED from crds/ by hack/sync_chart_crds.py: edit crds/, then run `make chart-crds`.\n"
KEEP = (
    "metadata:\n"
    "  {{- if .Values.crds.keep }}\n"
    "  annotations:\n"
    "    helm.sh/resource-policy: keep\n"
    "  {{- end }}\n"
)


def render() -> str:
    docs = []
    for path in sorted(SOURCE.glob("*.yaml")):
        text = path.read_text()
        if "{{" in text:
            raise SystemExit(f"{path}: CRDs must not contain Helm template markers")
        if "\nmetadata:\n" not in text or "\n  annotations:" in text.split("\nspec:")[0]:
            raise SystemExit(f"{path}: expected a top-level metadata block without annotations")
        docs.append(text.replace("\nmetadata:\n", "\n" + KEEP, 1).strip() + "\n")
    body = "---\n".join(docs)
    return HEADER + "{{- if .Values.crds.install }}\n" + body + "{{- end }}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    return write_or_check(TARGET, render(), check=args.check, remedy="make chart-crds", root=ROOT)


if __name__ == "__main__":
    sys.exit(main())
