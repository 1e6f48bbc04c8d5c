"""Which children the operator may write (pure): only objects it created or is about to create.

A user's Service that happens to carry a child's name is never adopted (server-side apply with
force would take its fields, and the ownerReference would later let the garbage collector delete
it); the conflict is named in a condition and the object is left exactly as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Only objects whose controller is this ModelDeployment are ours to change or delete."""
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in obj.get("metadata", {}).get("ownerReferences", []))


def key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def conflict_message(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata", {})
    owner = next((f"{r.get('kind')} {r.get('name')}" for r in meta.get("ownerReferences", [])
                  if r.get("controller")), "")
    held = f"controlled by {owner}" if owner else "created by someone else"
    return (f"{obj.get('kind')} {meta.get('namespace')}/{meta.get('name')} already exists, {held}: "
            f"left alone (rename or delete it to let the operator create its own)")


def conflicts(wanted: Iterable[Mapping[str, Any]], live: Mapping[tuple[str, str], Mapping[str, Any] | None],
              uid: str) -> dict[tuple[str, str], str]:
    """Wanted children whose name is taken by an object this ModelDeployment does not control."""
    out: dict[tuple[str, str], str] = {}
    for obj in wanted:
        have = live.get(key(obj))
        if have is not None and not controlled_by(have, uid):
            out[key(obj)] = conflict_message(have)
    return out
