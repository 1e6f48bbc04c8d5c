"""docs/api-reference.md is generated from the CRD by hack/gen_api_reference.py: a stale copy fails here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "gen_api_reference.py"
CRD = ROOT / "crds" / "modeldeploy.io_modeldeployments.yaml"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("md_gen_api_reference", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fields(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, child in (node.get("properties") or {}).items():
        yield f"{path}.{name}".lstrip("."), child
        yield from _fields(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _fields(node["items"], f"{path}[]")


def test_api_reference_is_current() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_every_field_default_enum_and_rule_is_documented() -> None:
    text = (ROOT / "docs" / "api-reference.md").read_text()
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    fields = [(p, n) for p, n in _fields(schema, "") if p.startswith(("spec", "status"))]
    assert len(fields) > 50
    for path, node in fields:
        assert f"#### `{path}`" in text, path
        section = text.split(f"#### `{path}`", 1)[1].split("\n#### ", 1)[0]
        if "default" in node:
            assert "**Default:**" in section, path
        for value in node.get("enum", []):
            assert f'`"{value}"`' in section or f"`{value}`" in section, (path, value)
        if node.get("description"):
            assert " ".join(node["description"].split())[:40] in section, path
    for _, node in [("", schema), *_fields(schema, "")]:
        for rule in node.get("x-kubernetes-validations", []):
            assert " ".join(rule["message"].split()) in text, rule["message"]


def test_check_mode_fails_when_stale(tmp_path: Path) -> None:
    gen = _generator()
    gen.TARGET = tmp_path / "api-reference.md"
    assert gen.main(["--check"]) == 1  # missing
    gen.TARGET.write_text(gen.render() + "stale\n")
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.TARGET.read_text() == gen.render()
    assert gen.main(["--check"]) == 0
