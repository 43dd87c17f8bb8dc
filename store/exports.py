"""Exports of a session's DAG: JSON (as stored), Mermaid and Graphviz DOT."""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["dag_to_json", "dag_to_mermaid", "dag_to_dot", "FORMATS"]

_SHAPES = {"phase": ("[[", "]]"), "step": ("[", "]"), "agent": ("([", "])")}
_EDGE_STYLE = {"contains": "-.->", "sequence": "-->", "dependency": "==>", "redo": "-. redo .->"}


def _label(node: dict[str, Any]) -> str:
    return f"{node['name']} · {node['status']}"


_MERMAID_WORDS = {"end", "graph", "subgraph", "flowchart", "style", "class", "classdef", "click", "linkstyle",
                  "direction"}


def _mermaid_id(node_id: Any) -> str:
    # Mermaid ids are bare words (ours are n1, n2 ...): anything else (dots, spaces, dashes, keywords)
    # would be read as syntax, so it is spelled out with its characters' codes.
    text = str(node_id)
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", text) and text.lower() not in _MERMAID_WORDS:
        return text
    return "id_" + re.sub(r"[^A-Za-z0-9]", lambda m: f"_{ord(m.group()):x}_", text)


def _mermaid_text(text: str) -> str:
    # Inside a quoted label Mermaid reads entity codes; quotes, angle brackets and # must be codes.
    return "".join(_MERMAID_ENTITIES.get(ch, ch) for ch in text.replace("\r", "").replace("\n", " "))


# "&" too: labels are HTML, so a step named "a &amp; b" showed as "a & b"
_MERMAID_ENTITIES = {'"': "#quot;", "#": "#35;", "<": "#lt;", ">": "#gt;", "`": "#96;", "&": "#38;"}


def _dot_str(text: Any) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as DOT's \\n."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dag_to_json(dag: dict[str, Any]) -> str:
    return json.dumps(dag, indent=2, default=str)


def dag_to_mermaid(dag: dict[str, Any]) -> str:
    lines = ["flowchart TD"]
    for n in dag["nodes"]:
        left, right = _SHAPES.get(n["kind"], ("[", "]"))
        lines.append(f'    {_mermaid_id(n["node_id"])}{left}"{_mermaid_text(_label(n))}"{right}')
    for e in dag["edges"]:
        lines.append(f"    {_mermaid_id(e['src'])} {_EDGE_STYLE.get(e['type'], '-->')} {_mermaid_id(e['dst'])}")
    for status, color in (("failed", "#f88"), ("completed", "#bfb"), ("running", "#ffd"), ("skipped", "#ddd")):
        ids = [_mermaid_id(n["node_id"]) for n in dag["nodes"] if n["status"] == status]
        if ids:
            lines.append(f"    classDef {status} fill:{color}")
            lines.append(f"    class {','.join(ids)} {status}")
    return "\n".join(lines) + "\n"


def dag_to_dot(dag: dict[str, Any]) -> str:
    shapes = {"phase": "box3d", "step": "box", "agent": "ellipse"}
    styles = {"contains": "dotted", "sequence": "solid", "dependency": "bold", "redo": "dashed"}
    lines = [f'digraph {_dot_str(dag["session"])} {{', "    rankdir=TB;"]
    for n in dag["nodes"]:
        shape = shapes.get(n["kind"], "box")
        lines.append(f'    {_dot_str(n["node_id"])} [label={_dot_str(_label(n))}, shape={shape}];')
    for e in dag["edges"]:
        lines.append(f'    {_dot_str(e["src"])} -> {_dot_str(e["dst"])} [style={styles.get(e["type"], "solid")}, '
                     f'label={_dot_str(e["type"] if e["type"] in ("dependency", "redo") else "")}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


FORMATS = {"json": dag_to_json, "mermaid": dag_to_mermaid, "dot": dag_to_dot}
