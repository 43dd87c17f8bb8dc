"""Lineage reads: the replay seed of a recorded session, and the family tree of a session.

:func:`replay_seed` turns a session's record into what a replay runner serves from (see runner/replay.py):
every successful LLM call as {digest of its canonical request: [recorded responses in order]}, every
answered approval as {digest of the question: [answers in order]}, optionally only up to the end of a node.
:func:`family` walks ``sessions.parent_id`` up to the root and down to every descendant.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from labd.ipc.family import nest_family
from labd.runner.replay import approval_digest, last_input, part_digests, request_digest
from labd.store.attempts import superseded_nodes
from labd.store.checkpoints import checkpoints
from labd.store.schema import events, sessions, state_history

__all__ = ["replay_seed", "cut_seq", "family", "SEED_KINDS"]

SEED_KINDS = ["llm.request", "llm.response", "approval.requested", "approval.resolved", "approval.replayed",
              "step.started"]


def _all_events(store: Any, sid: str, kinds: list[str], upto: int | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        page = store.events_page(sid, since=since, kinds=kinds, full=True)
        rows = page["events"]
        out.extend(e for e in rows if upto is None or e["seq"] <= upto)
        if not page["more"] or not rows or (upto is not None and rows[-1]["seq"] > upto):
            return out
        since = rows[-1]["seq"]


def cut_seq(store: Any, sid: str, node: str) -> int | None:
    """The last event of ``node`` and everything nested in it (the replay point); None if it has none."""
    nodes = store.subtree(sid, node)
    with store.engine.connect() as conn:
        value = conn.execute(select(func.max(events.c.seq)).where(
            events.c.session_id == sid, events.c.node_id.in_(nodes))).scalar()
    return int(value) if value is not None else None


#: how many generations of branches a replay seed follows up to the steps they reused
MAX_GENERATIONS = 64


def replay_seed(store: Any, session: dict[str, Any], until: str | None = None, *,
                inherit: bool = True) -> dict[str, Any]:
    """The seed a replay of ``session`` serves from; with ``until`` (a node id) only what was recorded up to
    the end of that node. Of a resumed session, only its effective run: the attempts the resume ran again
    (:func:`labd.store.attempts.superseded_nodes`) are left out, with their calls and approvals. Of a branch,
    with ``inherit``, also what its reused steps recorded in the session(s) it was branched from, for a replay
    that runs them again; without, its own record only, for a replay that reuses them as the branch did."""
    sid = session["id"]
    upto = cut_seq(store, sid, until) if until else None
    gone = superseded_nodes(store, sid)
    own = [e for e in _all_events(store, sid, SEED_KINDS, upto) if e["node_id"] not in gone]
    seed = _Seed()
    for row, evs in [*(_inherited(store, session, None, 0) if inherit else []), (session, own)]:
        seed.add(store, row, evs)
    return {"parent": sid, "workdir": session["workdir"], "until": until, "llm": seed.llm,
            "approvals": seed.approvals, "order": seed.order, "steps": seed.steps, "step_paths": seed.step_paths}


def _inherited(store: Any, session: dict[str, Any], wanted: set[str] | None,
               depth: int) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """For a branch: its parent's recorded events inside the steps the branch reused (``wanted``: only those of
    them a child branch reused in turn), oldest generation first."""
    if session.get("origin") != "branch" or not session.get("parent_id") or depth >= MAX_GENERATIONS:
        return []
    reused = {n["node_id"] for n in store.steps(session["id"]) if n["status"] == "reused"}
    if wanted is not None:
        reused &= wanted
    # in the parent's ids: a reused *planned* step has the id its plan gave it in the branch, and its checkpoint
    # names the parent's node it stands for (`origin_node`)
    origin = {cp["node_id"]: cp["origin_node"] for cp in checkpoints(store, session["id"])
              if cp.get("reused") and cp.get("origin_node")} if reused else {}
    reused = {origin.get(n, n) for n in reused}
    parent = store.session(session["parent_id"]) if reused else None
    if parent is None:
        return []  # nothing reused, or the parent was deleted: those steps' calls go to the model
    rows = store.steps(parent["id"])
    nodes = _subtrees(rows, reused)
    gone = superseded_nodes(store, parent["id"], rows)
    evs = [e for e in _all_events(store, parent["id"], SEED_KINDS, None) if e["node_id"] in nodes - gone]
    return [*_inherited(store, parent, reused, depth + 1), (parent, evs)]


def _subtrees(rows: list[dict[str, Any]], roots: set[str]) -> set[str]:
    """``roots`` and every node nested in one of them, from one read of the session's nodes (``rows``): a branch may
    reuse thousands of steps, and a walk per root over all of them took minutes on the daemon's request loop."""
    children: dict[str, list[str]] = {}
    for n in rows:
        if n["parent_node"]:
            children.setdefault(n["parent_node"], []).append(n["node_id"])
    out: set[str] = set()
    todo = list(roots)
    while todo:
        nid = todo.pop()
        if nid not in out:
            out.add(nid)
            todo.extend(children.get(nid, ()))
    return out


class _Seed:
    """What a replay serves, built from one recorded session's events after another's (a branch's ancestors
    first): requests are digested with the placeholders of the session that made them."""

    def __init__(self) -> None:
        self.llm: dict[str, list[dict[str, Any]]] = {}
        self.approvals: dict[str, list[dict[str, Any]]] = {}
        self.order: list[dict[str, Any]] = []
        self.steps: dict[str, str] = {}
        self.step_paths: dict[str, str] = {}  # by position, where the record has them: ids jump at a resume

    def add(self, store: Any, session: dict[str, Any], evs: list[dict[str, Any]]) -> None:
        sid, workdir = session["id"], session["workdir"]
        requests = {e["src_seq"]: e for e in evs if e["kind"] == "llm.request"}
        resolved = {e["payload"].get("approval_id"): e["payload"] for e in _all_events(
            store, sid, ["approval.resolved"], None)}  # an answer given after the replay point still answers
        for e in evs:
            p, kind = e["payload"], e["kind"]
            if kind == "step.started" and e["node_id"]:
                self.steps[e["node_id"]] = str(p.get("name", ""))
                if isinstance(p.get("path"), str):
                    self.step_paths[p["path"]] = str(p.get("name", ""))
            elif kind == "llm.response":
                req = requests.get(e["parent"])
                if req is None or p.get("status") != "ok" or not isinstance(req["payload"].get("request"), dict):
                    continue  # a failed call, or one recorded without its full request: nothing to serve
                request = req["payload"]["request"]
                digest = request_digest(request, workdir=workdir, session_id=sid)
                response = {k: v for k, v in p.items() if k not in ("duration", "replayed", "status")}
                self.llm.setdefault(digest, []).append({"response": response, "index": len(self.order)})
                self.order.append({"what": "llm", "digest": digest, "node": req["node_id"], "agent": p.get("agent"),
                                   "input": last_input(request)[-300:],
                                   "parts": part_digests(request, workdir=workdir, session_id=sid)})
            elif kind in ("approval.requested", "approval.replayed"):
                if kind == "approval.requested":
                    answer = resolved.get(p.get("approval_id"))
                    if answer is None:
                        continue  # never answered: a replay asks a human
                    digest = approval_digest(p["kind"], p["prompt"], p.get("options"), p.get("context"),
                                             workdir=workdir, session_id=sid)
                else:
                    answer, digest = p, p["digest"]  # a replay of a replay: the answer it was served
                entry = {k: answer.get(k) for k in ("decision", "feedback", "hypothesis")
                         if answer.get(k) is not None}
                self.approvals.setdefault(digest, []).append({**entry, "index": len(self.order)})
                self.order.append({"what": "approval", "digest": digest, "node": e["node_id"], "kind": p["kind"],
                                   "input": str(p["prompt"])[-300:]})


#: generations below the root a ``sessions.tree`` reply nests (two JSON levels each; JSON readers stop at 255 levels):
#: a deeper family comes as a flat ``members`` list, each naming its parent
MAX_TREE_DEPTH = 100


def family(store: Any, sid: str) -> dict[str, Any]:
    """The tree of ``sid``'s family: its root ancestor and every descendant (branches, replays, skill runs),
    each node ``{id, name, status, origin, branch_node, parent_id, created_at, resumes, children}``;
    ``resumes`` counts the times a session went back to running after it had ended (same session). ``depth``: the
    generations below the root; past :data:`MAX_TREE_DEPTH` ``tree`` is None and ``members`` lists the family flat,
    oldest first (:func:`labd.ipc.family.nest_family` makes the tree of it)."""
    cols = (sessions.c.id, sessions.c.name, sessions.c.status, sessions.c.origin, sessions.c.branch_node,
            sessions.c.parent_id, sessions.c.created_at, sessions.c.workflow, sessions.c.cost)
    with store.engine.connect() as conn:
        def row(i: str) -> dict[str, Any] | None:
            r = conn.execute(select(*cols).where(sessions.c.id == i)).mappings().first()
            return dict(r) if r else None

        root = row(sid)
        if root is None:
            raise KeyError(sid)
        seen = {root["id"]}
        while root["parent_id"] and root["parent_id"] not in seen:
            up = row(root["parent_id"])
            if up is None:
                break  # the parent was deleted: the oldest one still stored is the root
            seen.add(up["id"])
            root = up
        members = {root["id"]: root}
        frontier = [root["id"]]
        depth = 0  # generations below the root
        while frontier:
            kids = conn.execute(select(*cols).where(sessions.c.parent_id.in_(frontier))
                                .order_by(sessions.c.created_at)).mappings().all()
            frontier = []
            for k in kids:
                if k["id"] not in members:
                    members[k["id"]] = dict(k)
                    frontier.append(k["id"])
            depth += bool(frontier)
        ended = ("completed", "failed", "cancelled", "lost")
        # a resume leaves the ended status for the run queue (ended -> queued -> starting -> running): each
        # transition out of an ended status is one (counting "ended -> running" found none)
        resumes = dict(conn.execute(
            select(state_history.c.session_id, func.count())
            .where(state_history.c.session_id.in_(list(members)), state_history.c.from_status.in_(ended),
                   state_history.c.to_status.in_(("queued", "starting", "running")))
            .group_by(state_history.c.session_id)).all())
    for m in members.values():
        m["resumes"] = int(resumes.get(m["id"], 0))
    flat = sorted(members.values(), key=lambda m: m["created_at"])
    out = {"session": sid, "root": root["id"], "size": len(members), "depth": depth}
    if depth > MAX_TREE_DEPTH:  # too deep to nest in a reply: the members, each naming its parent
        return {**out, "tree": None, "members": flat}
    return {**out, "tree": nest_family(flat, root["id"])}
