"""`labd dag`'s tree drawing (labd.frontends.cli.records.tree_lines)."""

from __future__ import annotations

from typing import Any

from labd.frontends.cli.records import tree_lines


def _node(nid: str, parent: str | None = None) -> dict[str, Any]:
    return {"node_id": nid, "name": f"step {nid}", "kind": "step", "status": "completed", "parent_node": parent}


def test_a_tree_is_drawn_in_recorded_order_with_box_characters() -> None:
    """Roots in recorded order, each node's children under it, the last child with a corner; nodes that are each
    other's parent (a damaged record) do not hang it."""
    dag = {"nodes": [_node("n1"), _node("n2", "n1"), _node("n3", "n2"), _node("n4", "n1"), _node("n5"),
                     _node("n6", "n7"), _node("n7", "n6")],
           "edges": []}
    assert [text for text, _ in tree_lines(dag)] == [
        "n1 step n1 · completed",
        "├── n2 step n2 · completed",
        "│   └── n3 step n3 · completed",
        "└── n4 step n4 · completed",
        "n5 step n5 · completed",
    ]


def test_steps_nested_deeper_than_the_recursion_limit_are_drawn() -> None:
    """Steps nested 3,000 deep (a workflow's code decides how deep) are drawn, one line each; before: a
    RecursionError traceback from `labd dag SESSION`."""
    depth = 3_000
    dag = {"nodes": [_node("n1")] + [_node(f"n{i}", f"n{i - 1}") for i in range(2, depth + 1)], "edges": []}
    lines = [text for text, _ in tree_lines(dag)]
    assert len(lines) == depth
    assert lines[-1] == " " * 4 * (depth - 2) + f"└── n{depth} step n{depth} · completed"
