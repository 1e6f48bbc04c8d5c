"""Serving pods run the fetch in a small image: it must work without torch, onnxruntime or numpy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from modeldeploy.artifact.dirstore import DirStore
from modeldeploy.artifact.manifest import manifest_for
from modeldeploy.artifact.transfer import publish

KEY = "echo-0123456789abcdef0123456789abcdef"
HEAVY = ("torch", "onnxruntime", "numpy", "onnx", "kopf", "kubernetes", "yaml")


def test_fetch_path_imports_no_heavy_or_operator_dependencies(tmp_path: Path) -> None:
    model = tmp_path / "built" / "echo"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text("print('hello')\n")
    (model / "config.pbtxt").write_text('name: "echo"\nbackend: "python"\n')
    store = DirStore(tmp_path / "store")
    store.root.mkdir()
    publish(store, KEY, model, manifest_for(model, key=KEY, model_name="echo"))
    code = (
        "import sys, json\n"
        "import modeldeploy.artifact.cli as cli, modeldeploy.artifact.fetch, modeldeploy.artifact.s3store\n"
        "import modeldeploy.artifact.cache, modeldeploy.artifact.dirstore, modeldeploy.artifact.key\n"
        f"rc = cli.main(['fetch', '--key', '{KEY}'], {{'MD_ARTIFACT_STORE': 'file://{store.root}', "
        f"'MD_REPOSITORY': '{tmp_path / 'repo'}', 'MD_TERMINATION_LOG': '{tmp_path / 'term'}'}})\n"
        f"print(json.dumps([rc, sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    rc, heavy = json.loads(out.strip().splitlines()[-1])
    assert rc == 0, out
    assert heavy == [], f"the artifact fetch imports {heavy}"
    assert (tmp_path / "repo" / "echo" / "1" / "model.py").read_text() == "print('hello')\n"
