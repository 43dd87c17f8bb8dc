"""Which recorded nodes a resume superseded: the effective run of a resumed session.

A resumed session (``labd resume``) runs its workflow again from the top: steps that completed before are
restored from their checkpoints without new events, everything else runs again under new node ids (after the
record's). So its record holds, before the last ``session.continued``, attempts that no longer count: a step
that failed or was interrupted and then ran again at the same position, the agent turns and LLM calls inside
it, and agent turns outside any step (code outside steps runs again too). Replay and compare read the run that
counted, not those (docs/design.md, "Replay and compare of a resumed session").

A node is superseded when it started before the last ``session.continued`` and

- it is a step whose position (``path`` in its ``step.started``, recorded since 2026-12) was started again after
  it; for a record without positions, a step that did not complete (a resume runs every such step again);
- or it is an agent turn whose nearest enclosing step is superseded or that has no enclosing step.

Steps that completed before the resume, and everything nested in them, stay: the resume kept their results.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import func, select

from labd.ipc.events import TERMINAL_STATUSES
from labd.store.schema import events, sessions, state_history, steps

__all__ = ["earlier_runs", "run_keys", "run_starts", "step_paths", "superseded_nodes"]

#: statuses of a step the resume kept (its checkpoint was restored, a branch reused it, or a plan it re-announced)
_KEPT = frozenset({"completed", "reused", "planned"})


def run_starts(conn: Any, ids: list[str] | None = None, *, first: bool = False) -> dict[str, int]:
    """``{session: seq}``: the ``seq`` of the ``session.continued`` that began each session's current run (``first``:
    its first resumed run), for the sessions among ``ids`` (None: every session that has not ended) resumed at least
    once; a session's first run began with none (0). Read from the state history: a continuation is the one
    transition out of an ended status into ``queued`` (store/projections.py ``_continue``), with that event's
    ``seq``."""
    query = (select(state_history.c.session_id, (func.min if first else func.max)(state_history.c.seq))
             .where(state_history.c.from_status.in_(sorted(TERMINAL_STATUSES)), state_history.c.to_status == "queued")
             .group_by(state_history.c.session_id))
    if ids is None:
        live = select(sessions.c.id).where(sessions.c.status.not_in(sorted(TERMINAL_STATUSES)))
        return {sid: int(seq) for sid, seq in conn.execute(query.where(state_history.c.session_id.in_(live)))}
    out: dict[str, int] = {}
    for start in range(0, len(ids), 500):  # bound the IN list (SQLite's parameter limit)
        chunk = ids[start:start + 500]
        out.update((sid, int(seq)) for sid, seq in conn.execute(query.where(state_history.c.session_id.in_(chunk))))
    return out


def earlier_runs(conn: Any, ids: list[str]) -> dict[str, tuple[int, float]]:
    """``{session: (runs, seconds)}`` for those of ``ids`` whose runner started more than once (a resumed session):
    how many runs had a runner that started, and how long the runs before the last one ran (each from its
    ``running`` on a runner's start to its end; the last run is ``started_at`` .. ``ended_at`` of the session's row).
    ``labd show`` said "ran 3s" of a session that ran two days, then was resumed for 3 s."""
    started = state_history.c.from_status.in_(("created", "queued", "starting")) & (state_history.c.to_status
                                                                                     == "running")
    ended = state_history.c.to_status.in_(sorted(TERMINAL_STATUSES))
    out: dict[str, tuple[int, float]] = {}
    for first in range(0, len(ids), 500):  # bound the IN list (SQLite's parameter limit)
        rows = conn.execute(select(state_history.c.session_id, state_history.c.ts, state_history.c.to_status)
                            .where(state_history.c.session_id.in_(ids[first:first + 500]),
                                   state_history.c.node_id.is_(None), started | ended)
                            .order_by(state_history.c.session_id, state_history.c.seq))
        spans: dict[str, list[tuple[float, float | None]]] = {}
        for sid, ts, to in rows:
            runs = spans.setdefault(sid, [])
            if to == "running":
                runs.append((ts, None))
            elif runs and runs[-1][1] is None:  # the end of the run that started last
                runs[-1] = (runs[-1][0], ts)
        for sid, runs in spans.items():
            if len(runs) > 1:
                out[sid] = (len(runs), sum(end - start for start, end in runs[:-1] if end is not None))
    return out


def run_keys(conn: Any) -> dict[str, int]:
    """``{session: run}`` for every session that has not ended whose runner signs with a resumed run's key
    (:func:`labd.ipc.signing.derive_key`): the ``seq`` its run began with (:func:`run_starts`), unless that run's
    runner was launched by a daemon that gave it the session's first key (its ``session.launched`` has no
    ``run_key``: a labd before 2026-12-06; an upgrade must not cut such a runner off)."""
    runs = run_starts(conn)
    if not runs:
        return runs
    rows = conn.execute(select(events.c.session_id, events.c.seq, events.c.payload).where(
        events.c.session_id.in_(list(runs)), events.c.kind == "session.launched"))
    launched: dict[str, tuple[int, bool]] = {}
    for sid, seq, payload in rows:  # the launch of the current run: the last one after its continuation
        if seq > runs[sid] and seq > launched.get(sid, (0, False))[0]:
            launched[sid] = (seq, bool(orjson.loads(payload).get("run_key")))
    return {sid: seq for sid, seq in runs.items() if sid not in launched or launched[sid][1]}


def superseded_nodes(store: Any, sid: str, nodes: list[dict[str, Any]] | None = None) -> set[str]:
    """The ids of ``sid``'s nodes that a resume ran again (empty for a session never resumed). ``nodes``: the
    session's nodes as ``Store.steps`` gives them, when the caller has read them already."""
    with store.engine.connect() as conn:
        cut = run_starts(conn, [sid]).get(sid)  # the last continuation: where the run that counts began
        if cut is None:
            return set()
        if nodes is None:
            nodes = [dict(r) for r in conn.execute(select(
                steps.c.node_id, steps.c.parent_node, steps.c.kind, steps.c.status, steps.c.start_seq)
                .where(steps.c.session_id == sid)).mappings()]
    rows = [(n["node_id"], n["parent_node"], n["kind"], n["status"], n["start_seq"]) for n in nodes]
    paths = step_paths(store, sid)
    again = {paths[n] for n, _p, kind, _s, start in rows if kind != "agent" and (start or 0) > cut and n in paths}
    parent = {n: p for n, p, *_ in rows}
    kinds = {n: kind for n, _p, kind, *_ in rows}
    before = {n: (kind, status) for n, _p, kind, status, start in rows if start is not None and start <= cut}
    memo: dict[str, bool] = {}

    def gone(node: str) -> bool:
        """Was ``node`` (started before the cut) run again by the resume? Decided as the nearest enclosing node that
        tells decides it, walking up without recursion (a record can nest path-less steps thousands deep)."""
        chain: list[str] = []
        cur = node
        while True:
            if cur in memo:
                result = memo[cur]
                break
            memo[cur] = True  # a cycle in bad data counts as superseded rather than looping
            chain.append(cur)
            kind, status = before[cur]
            if cur in paths:
                result = paths[cur] in again
                break
            if kind != "agent" and not paths:  # a record from before positions: the status tells
                result = status not in _KEPT
                break
            up = _enclosing_step(cur, parent, kinds)  # an agent turn, or a step without a position (a skip): as
            if up is None or up not in before:  # the step it ran in
                result = up is None
                break
            cur = up
        for n in chain:
            memo[n] = result
        return result

    return {n for n in before if gone(n)}


def _enclosing_step(node: str, parent: dict[str, str | None], kinds: dict[str, str]) -> str | None:
    """The nearest step (not an agent turn) ``node`` is nested in."""
    seen: set[str] = set()
    cur = parent.get(node)
    while cur is not None and cur not in seen:
        seen.add(cur)
        if kinds.get(cur) != "agent":
            return cur
        cur = parent.get(cur)
    return None


def step_paths(store: Any, sid: str) -> dict[str, str]:
    """``{node id: position}`` from the session's ``step.started`` events that carry one."""
    out: dict[str, str] = {}
    since = 0
    while True:
        page = store.events_page(sid, since=since, kinds=["step.started"], full=True)
        for e in page["events"]:
            path = e["payload"].get("path") if isinstance(e["payload"], dict) else None
            if e["node_id"] and isinstance(path, str):
                out[e["node_id"]] = path
        if not page["more"] or not page["events"]:
            return out
        since = page["events"][-1]["seq"]
