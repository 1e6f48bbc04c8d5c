"""Generate docs/api-reference.md from the ModelDeployment CRD (crds/, the one source of truth).

Every spec and status field: its path, type, default, enum, validation (bounds, patterns, CEL rules
with their messages) and description, in schema order.

Usage: python hack/gen_api_reference.py [--check]   (--check exits 1 when the reference is stale)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from generated import write_or_check

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "crds" / "modeldeploy.io_modeldeployments.yaml"
TARGET = ROOT / "docs" / "api-reference.md"
HEADER = ("<!-- GENERATED from crds/modeldeploy.io_modeldeployments.yaml by hack/gen_api_reference.py: "
          "edit the CRD, then run `make api-reference`. -->\n")

# Schema keywords shown as validation, with how to word them.
BOUNDS = (("minimum", "≥ {}"), ("maximum", "≤ {}"), ("exclusiveMinimum", "> {}"), ("exclusiveMaximum", "< {}"),
          ("minLength", "at least {} characters"), ("maxLength", "at most {} characters"),
          ("minItems", "at least {} items"), ("maxItems", "at most {} items"),
          ("minProperties", "at least {} entries"), ("maxProperties", "at most {} entries"),
          ("pattern", "matches `{}`"), ("format", "format `{}`"), ("uniqueItems", "items unique"),
          ("x-kubernetes-list-type", "list type `{}`"), ("x-kubernetes-list-map-keys", "map keys {}"))


def _type(node: dict[str, Any]) -> str:
    """A Go-like type name: string, integer, []object, map[string]string, int-or-string."""
    if node.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    kind = node.get("type", "any")
    if kind == "array":
        return "[]" + _type(node.get("items", {}))
    if kind == "object" and "additionalProperties" in node and "properties" not in node:
        extra = node["additionalProperties"]
        return "map[string]" + (_type(extra) if isinstance(extra, dict) else "any")
    return str(kind)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _code(text: str) -> str:
    """Inline code that survives backticks inside it."""
    ticks = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _walk(node: dict[str, Any], path: str, required: bool) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(path, schema node, required) for this node and every field under it, in schema order."""
    yield path, node, required
    needed = set(node.get("required", []))
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}", name in needed)
    items = node.get("items")
    if isinstance(items, dict) and items.get("properties"):
        yield from _walk(items, f"{path}[]", False)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("properties"):
        yield from _walk(extra, f"{path}.*", False)


def _rules_by_path(nodes: list[tuple[str, dict[str, Any], bool]]) -> dict[str, list[dict[str, Any]]]:
    """CEL rules (x-kubernetes-validations) keyed by the field they report on (their fieldPath)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path, node, _ in nodes:
        for rule in node.get("x-kubernetes-validations", []):
            target = path + rule["fieldPath"] if rule.get("fieldPath") else path
            out.setdefault(target, []).append({**rule, "declaredOn": path})
    return out


def _field(path: str, node: dict[str, Any], required: bool, rules: list[dict[str, Any]]) -> list[str]:
    lines = [f"#### `{path}`", ""]
    facts = [f"**Type:** `{_type(node)}`" + (" (required)" if required else "")]
    if "default" in node:
        facts.append(f"**Default:** {_code(_json(node['default']))}")
    if "enum" in node:
        facts.append("**Enum:** " + ", ".join(_code(_json(v)) for v in node["enum"]))
    bounds = [word.format(_code(_json(node[key])) if key == "x-kubernetes-list-map-keys" else node[key])
              for key, word in BOUNDS if key in node and node[key] is not False]
    if bounds:
        facts.append("**Validation:** " + "; ".join(bounds))
    lines.append(" · ".join(facts))
    lines.append("")
    if node.get("description"):
        lines += [_one_line(node["description"]), ""]
    for rule in rules:
        where = "" if rule["declaredOn"] == "." + path else f" (declared on `{rule['declaredOn'].lstrip('.')}`)"
        lines.append(f"- **Rule{where}:** {_code(_one_line(rule['rule']))}")
        if rule.get("message"):
            lines.append(f"  - message: {_one_line(rule['message'])}")
        if rule.get("messageExpression"):
            lines.append(f"  - message expression: {_code(_one_line(rule['messageExpression']))}")
    if rules:
        lines.append("")
    return lines


def render() -> str:
    """The whole reference, as Markdown."""
    crd = yaml.safe_load(SOURCE.read_text())
    names = crd["spec"]["names"]
    out = [HEADER, f"# API reference: {names['kind']}", ""]
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        api = f"{crd['spec']['group']}/{version['name']}"
        out += [f"`apiVersion: {api}` · `kind: {names['kind']}` · scope {crd['spec']['scope']} · "
                f"short name {', '.join(f'`{n}`' for n in names.get('shortNames', []))}"
                + (" · served" if version.get("served") else "") + (" · storage" if version.get("storage") else ""),
                "", _one_line(schema.get("description", "")), ""]
        nodes = list(_walk(schema, "", True))
        rules = _rules_by_path(nodes)
        if rules.get(""):
            out += ["## Object rules", ""]
            for rule in rules[""]:
                out.append(f"- {_code(_one_line(rule['rule']))}: {_one_line(rule.get('message', ''))}")
            out.append("")
        if version.get("additionalPrinterColumns"):
            out += ["## `kubectl get` columns", "", "| column | JSONPath | shown | description |", "|---|---|---|---|"]
            for col in version["additionalPrinterColumns"]:
                shown = "`-o wide`" if col.get("priority", 0) else "always"
                out.append(f"| {col['name']} | `{col['jsonPath']}` | {shown} | "
                           f"{_one_line(col.get('description', '')).replace('|', '/')} |")
            out.append("")
        for top in ("spec", "status"):
            section = [(p.lstrip("."), n, r) for p, n, r in nodes if p == f".{top}" or p.startswith(f".{top}.")]
            if not section:
                continue
            out += [f"## {top}", ""]
            for path, node, required in section:
                depth = path.count(".")
                if depth == 1 and path != top:
                    out += [f"### {path}", ""]
                out += _field(path, node, required, rules.get("." + path, []))
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the reference, or with --check say whether it is current."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/api-reference.md is stale")
    args = parser.parse_args(argv)
    return write_or_check(TARGET, render(), check=args.check, remedy="make api-reference", root=ROOT)


if __name__ == "__main__":
    sys.exit(main())
