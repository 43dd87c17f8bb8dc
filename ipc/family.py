"""A session family as ``sessions.tree`` describes it: the nested tree, made from the flat form when need be.

``sessions.tree`` nests the family (``tree``: each member with its ``children``) up to a depth a JSON reader takes;
a deeper family (a chain of branches of branches over 100 generations) comes flat instead (``tree`` null,
``members``: each naming its ``parent_id``), and :func:`family_tree` nests it here, iteratively (any depth).
"""

from __future__ import annotations

from typing import Any

__all__ = ["family_tree", "nest_family"]


def nest_family(members: list[dict[str, Any]], root: str) -> dict[str, Any]:
    """The nested tree below ``root`` of ``members`` (oldest first, each with ``id`` and ``parent_id``): each member a
    copy with ``children`` (oldest first). A member whose parent is not among them is left out, as the daemon does."""
    nodes = {m["id"]: {**m, "children": []} for m in members}
    for m in members:
        parent = nodes.get(m["parent_id"]) if m.get("parent_id") else None
        if parent is not None and m["id"] != root:
            parent["children"].append(nodes[m["id"]])
    return nodes[root]


def family_tree(reply: dict[str, Any]) -> dict[str, Any]:
    """The nested tree of a ``sessions.tree`` reply, whichever form it came in."""
    if reply.get("tree") is not None:
        return reply["tree"]  # type: ignore[no-any-return]
    return nest_family(reply.get("members") or [], reply["root"])
