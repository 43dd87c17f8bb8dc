"""Exports of a session's DAG: JSON (as stored), Mermaid and Graphviz DOT."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dag_to_json", "dag_to_mermaid", "dag_to_dot", "FORMATS"]

_SHAPES = {"phase": ("[[", "]]"), "step": ("[", "]"), "agent": ("([", "])")}
_EDGE_STYLE = {"contains": "-.->", "sequence": "-->", "dependency": "==>", "redo": "-. redo .->"}


def _label(node: dict[str, Any]) -> str:
    text = f"{node['name']} · {node['status']}"
    return text.replace('"', "'")


def dag_to_json(dag: dict[str, Any]) -> str:
    return json.dumps(dag, indent=2, default=str)


def dag_to_mermaid(dag: dict[str, Any]) -> str:
    lines = ["flowchart TD"]
    for n in dag["nodes"]:
        left, right = _SHAPES.get(n["kind"], ("[", "]"))
        lines.append(f'    {n["node_id"]}{left}"{_label(n)}"{right}')
    for e in dag["edges"]:
        lines.append(f"    {e['src']} {_EDGE_STYLE.get(e['type'], '-->')} {e['dst']}")
    for status, color in (("failed", "#f88"), ("completed", "#bfb"), ("running", "#ffd"), ("skipped", "#ddd")):
        ids = [n["node_id"] for n in dag["nodes"] if n["status"] == status]
        if ids:
            lines.append(f"    classDef {status} fill:{color}")
            lines.append(f"    class {','.join(ids)} {status}")
    return "\n".join(lines) + "\n"


def dag_to_dot(dag: dict[str, Any]) -> str:
    shapes = {"phase": "box3d", "step": "box", "agent": "ellipse"}
    styles = {"contains": "dotted", "sequence": "solid", "dependency": "bold", "redo": "dashed"}
    lines = [f'digraph "{dag["session"]}" {{', "    rankdir=TB;"]
    for n in dag["nodes"]:
        lines.append(f'    "{n["node_id"]}" [label="{_label(n)}", shape={shapes.get(n["kind"], "box")}];')
    for e in dag["edges"]:
        lines.append(f'    "{e["src"]}" -> "{e["dst"]}" [style={styles.get(e["type"], "solid")}, '
                     f'label="{e["type"] if e["type"] in ("dependency", "redo") else ""}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


FORMATS = {"json": dag_to_json, "mermaid": dag_to_mermaid, "dot": dag_to_dot}
