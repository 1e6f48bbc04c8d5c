"""The loader runs in the serving image, which has neither kopf nor the Kubernetes client nor torch."""

from __future__ import annotations

import subprocess
import sys


def test_loader_imports_no_operator_dependencies() -> None:
    code = (
        "import sys, modeldeploy.loader.cli, modeldeploy.loader.pipeline, modeldeploy.loader.quantize;"
        "bad = sorted(m for m in ('kopf', 'kubernetes', 'torch', 'yaml') if m in sys.modules);"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"model-loader imports {out}"
