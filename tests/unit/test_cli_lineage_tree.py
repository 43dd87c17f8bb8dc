"""`labd tree`'s drawing of a session's family (labd.frontends.cli.lineage._tree_lines), fed the shape
`sessions.tree` returns: each node ``{id, name, status, origin, branch_node, resumes, children: [...]}``."""

from __future__ import annotations

from typing import Any

from labd.frontends.cli.lineage import _tree_lines


def _s(sid: str, *children: dict[str, Any], origin: str | None = None, branch_node: str | None = None,
       resumes: int = 0) -> dict[str, Any]:
    return {"id": sid, "name": f"run-{sid}", "status": "completed", "origin": origin, "branch_node": branch_node,
            "parent_id": None, "resumes": resumes, "children": list(children)}


def test_a_family_is_drawn_depth_first_with_its_children_in_order() -> None:
    """The root at the margin, each child under its parent in the order given, `|--` for a child with a later
    sibling and `` `-- `` for the last, `|   ` carrying a parent's later siblings down; origin, branch node,
    resumes and the asked-for session's `<` on the label (the output of the recursive version, kept)."""
    tree = _s("a",
              _s("b", _s("d", origin="replay"), _s("e", origin="branch", branch_node="n3"), origin="branch",
                 branch_node="n7"),
              _s("c", _s("f", resumes=2), origin="skill"))
    assert _tree_lines(tree, "e") == [
        "a  run-a  [completed]",
        "|-- b  run-b  [completed]  branch from n7",
        "|   |-- d  run-d  [completed]  replay",
        "|   `-- e  run-e  [completed]  branch from n3  <",
        "`-- c  run-c  [completed]  skill",
        "    `-- f  run-f  [completed]  resumed 2x",
    ]


def test_a_chain_of_branches_deeper_than_the_recursion_limit_is_drawn() -> None:
    """A chain of 3,000 branches of branches (each the only child of the one before) is drawn, one line per
    session, each indented one column more than its parent; before: RecursionError from `labd tree`."""
    depth = 3_000
    root = node = _s("s0")
    for i in range(1, depth):
        child = _s(f"s{i}", origin="branch", branch_node="n1")
        node["children"].append(child)
        node = child
    lines = _tree_lines(root, f"s{depth - 1}")
    assert len(lines) == depth
    assert lines[0] == "s0  run-s0  [completed]"
    assert lines[1] == "`-- s1  run-s1  [completed]  branch from n1"
    assert lines[-1] == " " * 4 * (depth - 2) + f"`-- s{depth - 1}  run-s{depth - 1}  [completed]  branch from n1  <"
    assert all(line.startswith(" " * 4 * (i - 1) + "`-- ") for i, line in enumerate(lines[1:], 1))
