"""Read-side queries of a session's step graph: its nodes with their LLM roll-ups, its edges, its files.

A mixin of :class:`labd.store.queries.Store` (it reads through the Store's engine); split from it because the
graph is a concern of its own, and the reads of a days-long session's (100,000 nodes) need their own bounds.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, func, select

from labd.store.schema import cost_records, dag_edges, files, steps

__all__ = ["GraphQueries", "children_first", "rollup"]

#: node ids per IN (...) list: one bound parameter each, well under SQLite's bound (32,766)
IN_CHUNK = 5000


def children_first(nodes: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Every node once as (node, the parent to pass its figures to, or None), each after all its descendants: a
    post-order of the parent links from the roots (nodes whose ``parent_node`` is not among them), iterative, so
    any depth costs one pass. Nodes in a malformed parent cycle (and what hangs below them) come after, walked from
    the first of them not yet reached; the cycle's link back points to a node already placed, and a node passes
    its figures only to a parent placed after it (None for a root, or for that link back)."""
    by_id = {n["node_id"]: n for n in nodes}
    kids: dict[Any, list[dict[str, Any]]] = {}
    roots = []
    for n in nodes:
        parent = n.get("parent_node")
        if parent in by_id and parent != n["node_id"]:
            kids.setdefault(parent, []).append(n)
        else:
            roots.append(n)
    order: list[dict[str, Any]] = []
    done: set[Any] = set()
    for start in [*roots, *nodes]:  # the roots, then whatever they did not reach (cycles)
        stack: list[tuple[dict[str, Any], bool]] = [(start, False)]
        while stack:
            n, expanded = stack.pop()
            if expanded:
                order.append(n)
            elif n["node_id"] not in done:
                done.add(n["node_id"])
                stack.append((n, True))
                stack.extend((c, False) for c in kids.get(n["node_id"], ()))
    place = {n["node_id"]: i for i, n in enumerate(order)}
    return [(n, by_id[p] if (p := n.get("parent_node")) in place and place[p] > i else None)
            for i, n in enumerate(order)]


def rollup(nodes: list[dict[str, Any]], own: dict[Any, Any]) -> list[dict[str, Any]]:
    """Add to each node the LLM usage of its subtree; ``own`` maps node_id -> (calls, prompt, completion,
    cost) recorded on that node itself."""
    for n in nodes:
        calls, prompt, completion, cost = own.get(n["node_id"]) or (0, 0, 0, 0.0)
        n.update(calls=int(calls or 0), prompt_tokens=int(prompt or 0), completion_tokens=int(completion or 0),
                 cost=float(cost or 0.0))
    # each node's subtree total is complete once its children were added to it: one hop up per node, children
    # first (walking every ancestor of every node was quadratic in the depth: a 3000-deep chain took ~20 s)
    for n, parent in children_first(nodes):
        if parent is not None:
            for key in ("calls", "prompt_tokens", "completion_tokens", "cost"):
                parent[key] += n[key]
    return nodes


class GraphQueries:
    """Graph reads (mixin of :class:`labd.store.queries.Store`)."""

    engine: Engine

    def steps(self, session_id: str) -> list[dict[str, Any]]:
        """DAG nodes in start order, each with its LLM roll-up: ``calls``, ``prompt_tokens``,
        ``completion_tokens`` and ``cost`` summed over the node and every node nested in it."""
        return self.newest_steps(session_id, None)[0]

    def newest_steps(self, session_id: str, most: int | None) -> tuple[list[dict[str, Any]], int]:
        """``(the newest most nodes in start order, rolled up as by steps(), how many the session has)``; None: all.
        Reads only those (a days-long session has tens of thousands): a node starts after the node it is nested
        in, so the newest nodes hold every node nested in them, and their roll-ups are complete."""
        # NULL (rows of old records without start_seq) counts as the oldest on every database: PostgreSQL sorts
        # NULLs last by default, SQLite first
        order = steps.c.start_seq.nulls_first() if most is None else steps.c.start_seq.desc().nulls_last()
        with self.engine.connect() as conn:
            rows = conn.execute(select(steps).where(steps.c.session_id == session_id).order_by(order)
                                .limit(most)).mappings().all()
            usage = (select(cost_records.c.node_id, func.count(), func.sum(cost_records.c.prompt_tokens),
                            func.sum(cost_records.c.completion_tokens), func.sum(cost_records.c.cost))
                     .where(cost_records.c.session_id == session_id).group_by(cost_records.c.node_id))
            if most is not None and len(rows) <= IN_CHUNK:  # these nodes' calls only (a long session's others
                # made most of them)
                usage = usage.where(cost_records.c.node_id.in_([r["node_id"] for r in rows]))
            own = {r[0]: r[1:] for r in conn.execute(usage).all()}
            total = len(rows) if most is None or len(rows) < most else self._count(conn, steps, session_id)
        nodes = [dict(r) for r in (rows if most is None else reversed(rows))]
        return rollup(nodes, own), total

    @staticmethod
    def _count(conn: Any, table: Any, session_id: str) -> int:
        return int(conn.execute(select(func.count()).select_from(table)
                                .where(table.c.session_id == session_id)).scalar() or 0)

    def edges(self, session_id: str, among: set[str] | None = None) -> list[dict[str, Any]]:
        """The session's DAG edges; ``among``: only those between these nodes."""
        q = select(dag_edges.c.src, dag_edges.c.dst, dag_edges.c.type).where(dag_edges.c.session_id == session_id)
        if among is not None and len(among) <= IN_CHUNK:
            q = q.where(dag_edges.c.dst.in_(sorted(among)))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [{"src": r[0], "dst": r[1], "type": r[2]} for r in rows
                if among is None or (r[0] in among and r[1] in among)]

    def dag(self, session_id: str, newest: int | None = None) -> dict[str, Any]:
        """Nodes (phases, steps, agent turns) and edges of a session's DAG. ``newest``: only the newest that many
        nodes (by start) and the edges between them; ``nodes_omitted`` then says how many older ones are not in it
        (a days-long session has 100,000 nodes: a view that shows the newest reads only those)."""
        nodes, total = self.newest_steps(session_id, newest)
        if total <= len(nodes):
            return {"session": session_id, "nodes": nodes, "edges": self.edges(session_id)}
        return {"session": session_id, "nodes": nodes, "nodes_omitted": total - len(nodes),
                "edges": self.edges(session_id, {n["node_id"] for n in nodes})}

    def files(self, session_id: str, since: int = 0) -> list[dict[str, Any]]:
        """The session's file history in seq order (``since``: only rows recorded after that seq)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(files).where(files.c.session_id == session_id, files.c.seq > since)
                                .order_by(files.c.seq)).mappings().all()
        out = [dict(r) for r in rows]
        for f in out:
            f["candidates"] = orjson.loads(f["candidates"]) if f.get("candidates") else None
            f["ambiguous"] = f["candidates"] is not None
        return out


    def nodes_by_id(self, session_id: str, ids: set[str]) -> dict[str, dict[str, Any]]:
        """These nodes of the session (``node_id``, ``name``, ``kind``, ``parent_node``) by id; unknown ids left out."""
        out: dict[str, dict[str, Any]] = {}
        wanted = sorted(ids)
        c = steps.c
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), IN_CHUNK):
                rows = conn.execute(select(c.node_id, c.name, c.kind, c.parent_node).where(
                    c.session_id == session_id, c.node_id.in_(wanted[i:i + IN_CHUNK]))).mappings().all()
                out.update((r["node_id"], dict(r)) for r in rows)
        return out
