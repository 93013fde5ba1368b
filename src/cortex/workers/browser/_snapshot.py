"""Snapshot text helpers: Playwright's ``aria_snapshot(mode="ai")`` text to JSON, the
changes between two snapshots, and size caps that say when they cut."""

from __future__ import annotations

import difflib
import re
from typing import Any

__all__ = ["cap", "changes", "to_json"]

_LINE = re.compile(
    r'^(?P<role>[^\s":\[]+)(?: "(?P<name>(?:[^"\\]|\\.)*)")?(?P<attrs>(?: \[[^\]]*\])*)'
    r"(?::(?: (?P<text>.*))?)?$")
_ATTR = re.compile(r"\[([^\]=]+)(?:=([^\]]*))?\]")


def cap(text: str, max_chars: int, *, hint: str) -> tuple[str, bool]:
    """`text` cut to `max_chars`, with a note saying so and how to get less."""
    if len(text) <= max_chars:
        return text, False
    return (text[:max_chars] + f"\n[cut: showing {max_chars} of {len(text)} characters; "
            f"{hint}]"), True


def to_json(text: str) -> list[dict[str, Any]]:
    """The ai snapshot's YAML-like outline as a tree of {role, name, ref, attrs, children}."""
    root: list[dict[str, Any]] = []
    stack: list[tuple[int, list[dict[str, Any]], dict[str, Any] | None]] = [(-1, root, None)]
    for raw in text.splitlines():
        stripped = raw.lstrip(" ")
        if not stripped.startswith("- "):
            continue
        indent = len(raw) - len(stripped)
        while stack[-1][0] >= indent:
            stack.pop()
        body = stripped[2:]
        parent = stack[-1][2]
        if body.startswith("/") and parent is not None:  # a property: "- /url: /next"
            key, _, value = body[1:].partition(": ")
            parent.setdefault("props", {})[key.rstrip(":")] = value
            continue
        node = _node(body)
        stack[-1][1].append(node)
        kids: list[dict[str, Any]] = node.setdefault("children", [])
        stack.append((indent, kids, node))
    _prune(root)
    return root


def _node(body: str) -> dict[str, Any]:
    m = _LINE.match(body)
    if m is None:
        return {"role": "text", "text": body}
    node: dict[str, Any] = {"role": m["role"]}
    if m["name"] is not None:
        node["name"] = m["name"].replace('\\"', '"')
    for key, value in _ATTR.findall(m["attrs"] or ""):
        if key == "ref":
            node["ref"] = value
        else:
            node.setdefault("attrs", {})[key] = value if value else True
    if m["text"]:
        node["text"] = m["text"].strip('"')
    return node


def _prune(nodes: list[dict[str, Any]]) -> None:
    for node in nodes:
        if node.get("children"):
            _prune(node["children"])
        else:
            node.pop("children", None)


def changes(before: str, after: str) -> str:
    """The lines that appeared (``+``) or went away (``-``) between two snapshots."""
    lines = [line for line in difflib.ndiff(before.splitlines(), after.splitlines())
             if line[:2] in ("+ ", "- ")]
    return "\n".join(lines) if lines else "(no changes since the last snapshot)"


def compact_ax_tree(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CDP ``Accessibility.getFullAXTree`` nodes without the ignored ones and empty fields."""
    out = []
    for n in nodes:
        if n.get("ignored"):
            continue
        item: dict[str, Any] = {"id": n.get("nodeId"), "role": n.get("role", {}).get("value")}
        name = n.get("name", {}).get("value")
        if name:
            item["name"] = name
        if n.get("backendDOMNodeId"):
            item["backend_node_id"] = n["backendDOMNodeId"]
        if n.get("childIds"):
            item["children"] = n["childIds"]
        props = {p["name"]: p.get("value", {}).get("value") for p in n.get("properties", [])}
        if props:
            item["props"] = props
        out.append(item)
    return out
