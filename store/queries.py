"""Read-side queries over the store: sessions, event history by seq, steps and state history.

Readers never write. With SQLite in WAL mode they run beside the ingest writer without blocking it.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, and_, case, func, or_, select

from labd.ipc.events import APPROVAL_OPTION_MAX, APPROVAL_OPTIONS_MAX, TERMINAL_STATUSES
from labd.store.attempts import earlier_runs
from labd.store.blobs import inline
from labd.store.cost_queries import COST_GROUPS, CostQueries
from labd.store.graph_queries import GraphQueries, children_first, rollup
from labd.store.known_keys import KnownKeys
from labd.store.schema import (
    IDEMPOTENCY_RETENTION,
    approvals,
    events,
    idempotency_keys,
    sessions,
    state_history,
)

__all__ = ["children_first", "Store", "MAX_PAGE", "rollup", "COST_GROUPS"]

MAX_PAGE = 5000
MAX_PAGE_BYTES = 8 * 1024 * 1024  # keeps a page well under the 16 MiB message limit
READ_ROWS = 32  # event rows read from the database at a time while a page is filled (it stops at the page's bytes)
ID_CHUNK = 500  # session ids per IN (...) list: well under SQLite's bound on parameters
#: the longest ``options`` JSON a valid approval request has (every character of every option a \uXXXX escape);
#: a longer one (recorded before the bounds, 2026-12-02) is left out of a ``bound`` read of approvals
OPTIONS_TEXT_MAX = 2 + APPROVAL_OPTIONS_MAX * (3 + 6 * APPROVAL_OPTION_MAX)


def _session_dict(row: Any) -> dict[str, Any]:
    d = dict(row)
    d["params"] = orjson.loads(d["params"])
    d["limits"] = orjson.loads(d["limits"])
    d["tags"] = orjson.loads(d["tags"]) if d.get("tags") else {}
    return d


class Store(GraphQueries, CostQueries):
    """Query helper bound to an engine."""

    def __init__(self, engine: Engine, known_keys: KnownKeys | None = None) -> None:
        self.engine = engine
        #: the keys the store holds, in memory (store/known_keys.py): a new key needs no store read
        self.known_keys = known_keys

    def session(self, session_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(sessions).where(sessions.c.id == session_id)).mappings().first()
        return _session_dict(row) if row else None

    def idempotent_start(self, key: str, now: float) -> dict[str, Any] | None:
        """The session a ``session.start`` with idempotency ``key`` created (``session_id``, ``digest``), if the
        key is still retained at ``now``."""
        if self.known_keys is not None and not self.known_keys.may_exist(key):
            return None
        q = select(idempotency_keys.c.session_id, idempotency_keys.c.digest).where(
            idempotency_keys.c.key == key, idempotency_keys.c.created_at >= now - IDEMPOTENCY_RETENTION)
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return dict(row) if row else None

    def find_session(self, ref: str) -> list[dict[str, Any]]:
        """Sessions whose id starts with ``ref`` or whose name equals it (newest first)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(sessions).where((sessions.c.id.startswith(ref, autoescape=True)) | (sessions.c.name == ref))
                .order_by(sessions.c.created_at.desc()).limit(20)
            ).mappings().all()
        return [_session_dict(r) for r in rows]

    def live_named(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        """Sessions named exactly ``name`` that have not ended (newest first), however many ended ones share it."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(sessions).where((sessions.c.name == name) & sessions.c.status.not_in(sorted(TERMINAL_STATUSES)))
                .order_by(sessions.c.created_at.desc()).limit(limit)
            ).mappings().all()
        return [_session_dict(r) for r in rows]

    def sessions(self, *, status: list[str] | None = None, limit: int = 200, workflow: str | None = None,
                 tags: dict[str, str] | None = None, since: float | None = None,
                 before: tuple[float, str] | None = None) -> list[dict[str, Any]]:
        """Sessions newest first (``created_at``, then ``id``, both descending); ``workflow`` exact, every ``tags``
        key=value present, created at or after ``since`` (seconds since the epoch); ``before``: only those after
        the session ``(created_at, id)`` in this order (the next page of a list that ended with it)."""
        q = select(sessions).order_by(sessions.c.created_at.desc(), sessions.c.id.desc())
        if status:
            q = q.where(sessions.c.status.in_(status))
        if workflow is not None:
            q = q.where(sessions.c.workflow == workflow)
        if since is not None:
            q = q.where(sessions.c.created_at >= since)
        if before is not None:
            at, sid = before
            q = q.where(or_(sessions.c.created_at < at, and_(sessions.c.created_at == at, sessions.c.id < sid)))
        if tags:  # compact JSON (orjson): each pair appears as "k":"v"; checked exactly below
            for k, v in tags.items():
                q = q.where(sessions.c.tags.contains(orjson.dumps({k: v}).decode()[1:-1], autoescape=True))
        else:
            # in SQL: PostgreSQL's driver fetches every row a query matches before the first is read (a page of 200
            # read and sorted all 200,000 sessions, 0.4 s); the (created_at, id) index then gives the page in order
            q = q.limit(limit)
        out: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            # with tags, rows are matched here: streamed in batches, not all fetched for the first page
            for r in conn.execution_options(yield_per=500).execute(q).mappings():
                d = _session_dict(r)
                if tags and any(d["tags"].get(k) != v for k, v in tags.items()):
                    continue
                out.append(d)
                if len(out) >= limit:
                    break
        return out

    def created(self, session_id: str) -> dict[str, Any]:
        """The payload of the session's ``session.created`` (what it was started with), or {} if it has none."""
        first = self.events(session_id, kinds=["session.created"], limit=1)
        return dict(first[0]["payload"]) if first else {}

    def events(self, session_id: str, *, since: int = 0, limit: int = MAX_PAGE,
               kinds: list[str] | None = None, full: bool = False) -> list[dict[str, Any]]:
        """Events with ``seq > since`` in seq order, at most ``limit`` (capped at :data:`MAX_PAGE`)."""
        return self.events_page(session_id, since=since, limit=limit, kinds=kinds, full=full)["events"]

    def subtree(self, session_id: str, node_id: str) -> list[str]:
        """``node_id`` and every node nested in it (steps, agent turns), from the DAG's parent links."""
        children: dict[str, list[str]] = {}
        for n in self.steps(session_id):
            if n["parent_node"]:
                children.setdefault(n["parent_node"], []).append(n["node_id"])
        out, todo = [], [node_id]
        while todo:
            nid = todo.pop()
            if nid in out:
                continue
            out.append(nid)
            todo.extend(children.get(nid, ()))
        return out

    def events_page(self, session_id: str, *, since: int = 0, limit: int = MAX_PAGE,
                    kinds: list[str] | None = None, full: bool = False, nodes: list[str] | None = None,
                    agent: str | None = None, max_bytes: int = MAX_PAGE_BYTES) -> dict[str, Any]:
        """A page of events after ``since``: at most ``limit`` rows and about ``max_bytes`` (at most
        :data:`MAX_PAGE_BYTES`; at least one event);
        ``more`` tells whether another page may follow. ``full`` inlines blob references (the complete
        LLM requests and responses); ``nodes`` keeps events of those nodes; ``agent`` those whose
        payload names that agent."""
        limit = max(1, min(limit, MAX_PAGE))
        max_bytes = max(1, min(max_bytes, MAX_PAGE_BYTES))
        q = (select(events.c.seq, events.c.ts, events.c.kind, events.c.src, events.c.node_id, events.c.parent,
                    events.c.payload, events.c.src_seq)
             .where(events.c.session_id == session_id, events.c.seq > since)
             .order_by(events.c.seq).limit(limit))
        if kinds:
            q = q.where(events.c.kind.in_(kinds))
        if nodes is not None:
            q = q.where(events.c.node_id.in_(nodes))
        if agent is not None:
            # payloads are stored as compact JSON (orjson), so the field appears exactly like this
            q = q.where(events.c.payload.contains('"agent":' + orjson.dumps(agent).decode(), autoescape=True))
        out: list[dict[str, Any]] = []
        size = taken = 0
        more = False
        # Rows are read a few at a time and no further than the page's bytes: a page of `limit` large events (a
        # workflow's custom events can be megabytes each) read whole first made one request hold gigabytes
        with self.engine.connect().execution_options(stream_results=True, max_row_buffer=READ_ROWS) as conn:
            result = conn.execute(q)
            try:
                while not more:
                    rows = result.fetchmany(READ_ROWS)
                    if not rows:
                        break
                    taken += len(rows)
                    payloads = inline(conn, [orjson.loads(r[6]) for r in rows]) if full else None
                    for i, r in enumerate(rows):
                        size += (len(orjson.dumps(payloads[i])) if payloads is not None else len(r[6])) + 100
                        if out and size > max_bytes:
                            more = True
                            break
                        out.append({"seq": r[0], "ts": r[1], "kind": r[2], "src": "runner" if r[3] == "r" else "daemon",
                                    "node_id": r[4], "parent": r[5],
                                    "payload": payloads[i] if payloads is not None else orjson.loads(r[6]),
                                    "src_seq": r[7]})
            finally:
                result.close()
        return {"events": out, "more": more or taken == limit}

    def history(self, session_id: str, most: int | None = None) -> list[dict[str, Any]]:
        """The session's state transitions in order (``most``: only the newest that many)."""
        order = state_history.c.seq if most is None else state_history.c.seq.desc()
        with self.engine.connect() as conn:
            rows = conn.execute(select(state_history).where(state_history.c.session_id == session_id)
                                .order_by(order).limit(most)).mappings().all()
        return [dict(r) for r in (rows if most is None else reversed(rows))]

    def earlier_runs(self, ids: list[str]) -> dict[str, tuple[int, float]]:
        """``{session: (runs, seconds the runs before the last one ran)}`` of the resumed sessions among ``ids``
        (:func:`labd.store.attempts.earlier_runs`)."""
        with self.engine.connect() as conn:
            return earlier_runs(conn, ids)

    def count_history(self, session_id: str) -> int:
        with self.engine.connect() as conn:
            return self._count(conn, state_history, session_id)

    def live_sessions(self) -> list[dict[str, Any]]:
        """Sessions not in a terminal status (what a restarted daemon must adopt or mark lost)."""
        return self.sessions(status=["created", "starting", "running", "paused", "waiting_approval"], limit=100_000)

    def session_ids(self) -> set[str]:
        """Every session id (one query: what a starting daemon checks its session directories against)."""
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(select(sessions.c.id))}

    def first_events(self, session_ids: list[str], kinds: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
        """The payload of the first event of each of ``kinds`` in each session, as ``{(session, kind): payload}``:
        one query per :data:`ID_CHUNK` sessions (re-queuing thousands of sessions at start is not two queries
        each)."""
        return {k: payload for k, (_ts, payload) in self._events_at(session_ids, kinds, func.min).items()}

    def last_events(self, session_ids: list[str],
                    kinds: list[str]) -> dict[tuple[str, str], tuple[float, dict[str, Any]]]:
        """``{(session, kind): (ts, payload)}`` of the last event of each of ``kinds`` in each session."""
        return self._events_at(session_ids, kinds, func.max)

    def _events_at(self, session_ids: list[str], kinds: list[str],
                   pick: Any) -> dict[tuple[str, str], tuple[float, dict[str, Any]]]:
        out: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(session_ids), ID_CHUNK):
                chunk = session_ids[start:start + ID_CHUNK]
                at = (select(events.c.session_id, events.c.kind, pick(events.c.seq).label("seq"))
                      .where(events.c.session_id.in_(chunk), events.c.kind.in_(kinds))
                      .group_by(events.c.session_id, events.c.kind).subquery())
                rows = conn.execute(select(events.c.session_id, events.c.kind, events.c.ts, events.c.payload).join(
                    at, (events.c.session_id == at.c.session_id) & (events.c.seq == at.c.seq)))
                for sid, kind, ts, payload in rows:
                    out[(sid, kind)] = (ts, orjson.loads(payload))
        return out

    def blob_count(self) -> int:
        """How many distinct blobs the store holds."""
        from labd.store.schema import blobs

        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(blobs)).scalar() or 0)

    def approvals(self, *, session_id: str | None = None, status: str | None = None, limit: int = 500,
                  per_session: int | None = None, after: tuple[float, str] | None = None,
                  ids: list[str] | None = None, bound: tuple[int, int] | None = None) -> list[dict[str, Any]]:
        """Approvals, oldest first (by ``requested_at``, then id). ``per_session``: at most that many of each
        session (its oldest), chosen fairly when ``limit`` cuts: every session's first before any session's
        second, and so on. ``after``: only those after that (``requested_at``, id). ``bound`` (chars, context
        chars): the texts cut in SQL (a huge prompt is never loaded whole) — prompt, feedback and hypothesis to
        their first ``chars`` characters, a context whose JSON is longer than ``context chars`` left out (null);
        each row then says ``truncated`` (and ``prompt_length`` when its prompt was cut); ``options`` longer than any
        valid request's (an old row's) are left out too (an empty list, ``truncated``)."""
        a = approvals.c
        where = _approval_filter(session_id, status, after, ids)
        texts = ("prompt", "feedback", "hypothesis")
        cols: list[Any] = [c for c in a if bound is None or c.name not in (*texts, "context", "options")]
        if bound is not None:
            cols += [func.substr(a[t], 1, bound[0]).label(t) for t in texts]
            cols += [func.length(a[t]).label(f"{t}_length") for t in (*texts, "context", "options")]
            cols.append(case((func.length(a.context) <= bound[1], a.context), else_=None).label("context"))
            cols.append(case((func.length(a.options) <= OPTIONS_TEXT_MAX, a.options), else_="[]").label("options"))
        q = select(*cols).where(*where).order_by(a.requested_at, a.id)
        if per_session is None:
            q = q.limit(limit)
        else:  # each session's rank among its own; the picked ones, then in time order
            rank = func.row_number().over(partition_by=a.session_id, order_by=(a.requested_at, a.id)).label("rank")
            ranked = select(a.id, a.requested_at, rank).where(*where).subquery()
            q = q.where(a.id.in_(select(ranked.c.id).where(ranked.c.rank <= per_session).order_by(
                ranked.c.rank, ranked.c.requested_at, ranked.c.id).limit(limit)))
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        out = []
        for r in rows:
            d = dict(r)
            d["options"] = orjson.loads(d["options"])
            d["context"] = orjson.loads(d["context"]) if d["context"] is not None else None
            if bound is not None:
                lengths = {t: d.pop(f"{t}_length") or 0 for t in (*texts, "context", "options")}
                d["truncated"] = (any(lengths[t] > bound[0] for t in texts) or lengths["context"] > bound[1]
                                  or lengths["options"] > OPTIONS_TEXT_MAX)
                if lengths["prompt"] > bound[0]:
                    d["prompt_length"] = lengths["prompt"]
            out.append(d)
        return out

    def approval_counts(self, *, session_id: str | None = None, status: str | None = None,
                        after: tuple[float, str] | None = None) -> list[tuple[str, int]]:
        """How many approvals each session has (as ``approvals`` filters them), sessions by their oldest."""
        a = approvals.c
        q = select(a.session_id, func.count()).where(*_approval_filter(session_id, status, after, None)).group_by(
            a.session_id).order_by(func.min(a.requested_at))
        with self.engine.connect() as conn:
            return [(str(s), int(n)) for s, n in conn.execute(q).all()]


def _approval_filter(session_id: str | None, status: str | None, after: tuple[float, str] | None,
                     ids: list[str] | None) -> list[Any]:
    a = approvals.c
    where: list[Any] = [a.session_id == session_id] if session_id else []
    if status:
        where.append(a.status == status)
    if after:
        where.append(or_(a.requested_at > after[0], and_(a.requested_at == after[0], a.id > after[1])))
    if ids is not None:
        where.append(a.id.in_(ids))
    return where
