"""The batch writer: the only code that writes the store, driven by the daemon's ingest thread.

One call to :meth:`BatchWriter.commit` writes a batch of event rows and the projection row changes they
caused in a single transaction, through the DB-API ``executemany`` (10x faster than ORM inserts,
DESIGN.md §9).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import Engine, select

from labd.store.attempts import run_keys
from labd.store.known_keys import KnownKeys
from labd.store.projections import RowChanges, SessionCursor
from labd.store.retention import delete_sessions, node_dirs
from labd.store.schema import ADD_TO_COST_SUMS, DAY, IDEMPOTENCY_RETENTION, SUMMED, approvals, model_key, sessions
from labd.store.skills import delete_skill, insert_skill

__all__ = ["BatchWriter", "EventRow", "PlainRow", "NodeRow"]

# (session_id, seq, ts, kind, src, src_seq, node_id, parent, payload_json)
EventRow = tuple[str, int, float, str, str, int, "str | None", "int | None", str]
#: an event row without node id and parent (both NULL): (session_id, seq, ts, kind, src, src_seq, payload_json).
#: Most bulk events have neither, and Python's sqlite3 binds None through its adapter lookup (~0.35 us per
#: parameter, more than the rest of the row's binding): such rows are inserted by a statement that names neither
#: column (docs/design.md, "Event path: the store's share").
PlainRow = tuple[str, int, float, str, str, int, str]
#: an event row with a node id but no parent (NULL): (session_id, seq, ts, kind, src, src_seq, node_id, payload_json)
NodeRow = tuple[str, int, float, str, str, int, str, str]

_first = itemgetter(0)
#: event rows per INSERT statement: a multi-row ``VALUES`` list binds what ``executemany`` binds row by row, but
#: steps the statement once per this many rows; measured ~25-30 % less CPU per stored row on SQLite
#: (docs/benchmarks.md §39). 100 rows of at most 9 columns stay under SQLite's oldest bound of 999 variables.
ROWS_PER_STATEMENT = 100
_SESSION_UPDATE_COLUMNS = frozenset(c.name for c in sessions.columns) - {"id"}


class BatchWriter:
    """Writes batches; owns one connection; used from a single thread."""

    def __init__(self, engine: Engine, known_keys: KnownKeys | None = None) -> None:
        self.engine = engine
        self.known_keys = known_keys  # told of idempotency keys before they are committed (store/known_keys.py)
        #: told how many sessions each commit inserted, once committed (the home's mark: daemon/store_identity.py)
        self.on_created: Callable[[int], None] | None = None
        self._conn = engine.connect()
        style = engine.dialect.paramstyle
        ph = "?" if style == "qmark" else "%s"
        self._p = ph
        self._insert_events = _Inserts("session_id, seq, ts, kind, src, src_seq, node_id, parent, payload", ph)
        #: rows without node id and parent (PlainRow), and with a node id only (NodeRow)
        self._insert_plain = _Inserts("session_id, seq, ts, kind, src, src_seq, payload", ph)
        self._insert_noded = _Inserts("session_id, seq, ts, kind, src, src_seq, node_id, payload", ph)

    def close(self) -> None:
        self._conn.close()

    def reconnect(self) -> None:
        """Replace the connection (after the database went away); raises while it is still unreachable."""
        from sqlalchemy import text

        try:
            self._conn.invalidate()
        except Exception:  # noqa: BLE001 - the old connection is dead anyway
            pass
        self._conn = self.engine.connect()
        self._conn.execute(text("SELECT 1"))
        self._conn.rollback()

    def _rolled_back(self) -> None:
        """After a read failed: end its transaction. A connection the database dropped (a PostgreSQL restart) is
        otherwise left refusing every statement ("Can't reconnect until invalid transaction is rolled back"), and
        ingest dropped every item that read a session's row, for good, while the daemon looked healthy (admin
        review)."""
        try:
            self._conn.rollback()
        except Exception:  # noqa: BLE001 - a dead connection: the caller's error says why
            pass

    def load_cursor(self, session_id: str) -> SessionCursor | None:
        """Rebuild ingest's cursor for a session from its row (after a restart, or first sight)."""
        try:
            return self._load_cursor(session_id)
        except BaseException:
            self._rolled_back()
            raise

    def _load_cursor(self, session_id: str) -> SessionCursor | None:
        row = self._conn.execute(select(sessions).where(sessions.c.id == session_id)).mappings().first()
        self._conn.rollback()
        if row is None:
            return None
        cur = SessionCursor(id=session_id, last_seq=row["last_seq"], runner_seq=row["runner_seq"],
                            status=row["status"], outcome=row["outcome"], peak_rss=row["peak_rss"],
                            peak_cpu_percent=row["peak_cpu_percent"])
        cur.outcome_error = row["outcome_error"]
        cur.rejected = row["rejected_events"]
        cur.stop_by = row["stop_by"]
        cur.kill_reason = row["kill_reason"]
        cur.cost = row["cost"] or 0.0
        limits = orjson.loads(row["limits"]) if row["limits"] else {}
        cur.limits = limits if isinstance(limits, dict) else {}
        budget, cap = limits.get("budget"), limits.get("output")
        cur.budget = float(budget) if isinstance(budget, int | float) else None
        cur.output_cap = cap if isinstance(cap, int) and not isinstance(cap, bool) else None
        cur.budget_hit = cur.budget is not None and cur.cost > cur.budget
        if not cur.terminal:  # an ended run's counts are over: a resume starts from 0
            cur.record_bytes, cur.output_chars = row["record_bytes"], row["output_chars"]
        pending = self._conn.execute(select(approvals.c.id, approvals.c.options).where(
            approvals.c.session_id == session_id, approvals.c.status == "pending")).all()
        self._conn.rollback()
        cur.pending_approvals = {r[0]: tuple(str(o) for o in orjson.loads(r[1])) for r in pending}
        return cur

    def run_keys(self) -> dict[str, int]:
        """The run each live session's runner key is derived for, where not its first (store/attempts.py)."""
        out = run_keys(self._conn)
        self._conn.rollback()
        return out

    def resolutions(self, session_id: str, ids: list[str]) -> list[dict[str, Any]]:
        """Resolved approvals among ``ids`` (re-sent to a runner that reconnects while waiting)."""
        if not ids:
            return []
        try:
            rows = self._conn.execute(select(approvals).where(
                approvals.c.session_id == session_id, approvals.c.id.in_(ids),
                approvals.c.status == "resolved")).mappings().all()
        except BaseException:
            self._rolled_back()
            raise
        self._conn.rollback()
        return [dict(r) for r in rows]

    def _insert(self, conn: Any, table: str, rows: list[dict[str, Any]], ignore_duplicates: bool = False) -> None:
        if not rows:
            return
        cols = list(rows[0])
        verb = "INSERT"
        suffix = ""
        if ignore_duplicates:  # both SQLite and PostgreSQL understand ON CONFLICT DO NOTHING
            suffix = " ON CONFLICT DO NOTHING"
        sql = f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join([self._p] * len(cols))}){suffix}"
        conn.exec_driver_sql(sql, [tuple(r.get(c) for c in cols) for r in rows])

    def _add_cost_sums(self, conn: Any, costs: list[dict[str, Any]]) -> None:
        """Add these calls to ``cost_sums`` (per session, model and UTC day), in the transaction that inserts them:
        the sums and the calls are committed, or refused, together."""
        if not costs:
            return
        sums: dict[tuple[str, str, int], list[Any]] = {}
        for r in costs:
            key = (r["session_id"], model_key(r["model"]), int(r["ts"] // DAY))
            g = sums.get(key)
            if g is None:
                g = sums[key] = [0, 0, 0, 0.0]
            g[0] += 1
            g[1] += r["prompt_tokens"]
            g[2] += r["completion_tokens"]
            g[3] += r["cost"]
        conn.exec_driver_sql(
            f"INSERT INTO cost_sums (session_id, model, day, {', '.join(SUMMED)}) VALUES ({', '.join([self._p] * 7)}) "
            f"{ADD_TO_COST_SUMS}", [(*k, *v) for k, v in sums.items()])

    def save_skill(self, doc: dict[str, Any], key: str | None = None, digest: str | None = None) -> dict[str, Any]:
        """Store a skill document as the next version of its name; ``{name, version}``. With an idempotency ``key``
        a retry gets the first save's version (``replayed``); :class:`~labd.store.skills.SkillError`
        ``idempotency_conflict`` for the key of another request (``digest``: of what the request asked)."""
        import time

        try:
            name, version, replayed = insert_skill(self._conn, doc, time.time(), key, digest)
            self._conn.commit()
            return {"name": name, "version": version, **({"replayed": True} if replayed else {})}
        except BaseException:
            self._conn.rollback()
            raise

    def delete_skill(self, name: str) -> dict[str, Any]:
        """Delete every version of a skill; ``{name, versions}``."""
        try:
            n = delete_skill(self._conn, name)
            self._conn.commit()
            return {"name": name, "versions": n}
        except BaseException:
            self._conn.rollback()
            raise

    def node_dirs(self, ids: list[str]) -> list[tuple[str, str, str]]:
        """Where the remote sessions among ``ids`` ran (:func:`labd.store.retention.node_dirs`): read before they are
        deleted."""
        try:
            return node_dirs(self._conn, ids)
        finally:
            self._conn.rollback()  # a read: no transaction left open

    def delete_sessions(self, ids: list[str]) -> dict[str, int]:
        """Delete whole sessions (every row of theirs, in one transaction); rows deleted per table."""
        try:
            counts = delete_sessions(self._conn, ids)
            self._conn.commit()
            return counts
        except BaseException:
            self._conn.rollback()
            raise

    def commit(self, rows: list[EventRow], changes: RowChanges, cursors: dict[str, SessionCursor],
               plain: Sequence[PlainRow] = (), noded: Sequence[NodeRow] = ()) -> None:
        """Write ``rows``, ``plain`` and ``noded`` rows and ``changes`` in one transaction; ``cursors`` give each
        session's seq marks."""
        conn = self._conn
        p = self._p
        try:
            if changes.session_inserts:
                cols = list(changes.session_inserts[0])
                sql = f"INSERT INTO sessions ({', '.join(cols)}) VALUES ({', '.join([p] * len(cols))})"
                conn.exec_driver_sql(sql, [tuple(r[c] for c in cols) for r in changes.session_inserts])
                # counted with them: a home that saw more than its store has knows the store went back (store/meta.py)
                conn.exec_driver_sql(f"UPDATE store_meta SET n = n + {p} WHERE key = 'sessions_created'",
                                     (len(changes.session_inserts),))
            if rows:
                self._insert_events.write(conn, rows)
            if plain:
                self._insert_plain.write(conn, plain)
            if noded:
                self._insert_noded.write(conn, noded)
            touched = set(map(_first, rows)) | set(map(_first, plain)) | set(map(_first, noded)) | set(
                changes.session_updates)  # C loops
            for sid in touched:
                cur = cursors[sid]
                values: dict[str, Any] = dict(changes.session_updates.get(sid, {}))
                values["last_seq"] = cur.last_seq
                values["runner_seq"] = cur.runner_seq
                values["record_bytes"] = cur.record_bytes
                values["output_chars"] = cur.output_chars
                bad = set(values) - _SESSION_UPDATE_COLUMNS
                if bad:
                    raise ValueError(f"unknown session columns {bad}")
                cols = list(values)
                sql = f"UPDATE sessions SET {', '.join(f'{c} = {p}' for c in cols)} WHERE id = {p}"
                conn.exec_driver_sql(sql, (*[values[c] for c in cols], sid))
            self._insert(conn, "steps", changes.step_inserts)
            self._insert(conn, "dag_edges", changes.edges, ignore_duplicates=True)
            self._insert(conn, "cost_records", changes.costs)
            self._add_cost_sums(conn, changes.costs)
            self._insert(conn, "files", changes.files)
            self._insert(conn, "approvals", changes.approval_inserts)
            self._insert(conn, "blobs", changes.blobs, ignore_duplicates=True)
            self._insert(conn, "blob_refs", changes.blob_refs, ignore_duplicates=True)
            for r in changes.approval_updates:
                cols = [c for c in r if c != "id"]
                sql = f"UPDATE approvals SET {', '.join(f'{c} = {p}' for c in cols)} WHERE id = {p}"
                conn.exec_driver_sql(sql, (*[r[c] for c in cols], r["id"]))
            if changes.step_starts:  # before step_updates: a planned node can start and finish in one batch
                sql = (f"UPDATE steps SET name = {p}, status = {p}, started_at = {p}, start_seq = {p}, attempt = {p}, "
                       f"redo_of = {p} WHERE session_id = {p} AND node_id = {p}")
                conn.exec_driver_sql(sql, [(r["name"], r["status"], r["started_at"], r["start_seq"], r["attempt"],
                                            r["redo_of"], r["session_id"], r["node_id"]) for r in changes.step_starts])
            if changes.step_updates:
                sql = (f"UPDATE steps SET status = {p}, ended_at = {p}, duration = {p}, error = {p} "
                       f"WHERE session_id = {p} AND node_id = {p}")
                conn.exec_driver_sql(sql, [(r["status"], r["ended_at"], r["duration"], r["error"],
                                            r["session_id"], r["node_id"]) for r in changes.step_updates])
            if changes.steps_closed:  # after step_updates: steps that finished in this batch are not open
                sql = (f"UPDATE steps SET status = 'interrupted', ended_at = {p}, error = {p} "
                       f"WHERE session_id = {p} AND status IN ('running', 'paused')")
                conn.exec_driver_sql(sql, [(r["ended_at"], r["error"], r["session_id"]) for r in changes.steps_closed])
            self._insert(conn, "state_history", changes.history)
            if changes.idempotency:
                # bounded retention, pruned where keys are added (starts are rare; the index makes it cheap);
                # first, so that an expired key given again is recorded for its new session
                if self.known_keys is not None:  # before the commit: a reader never misses a committed key
                    self.known_keys.note(changes.idempotency)
                cutoff = changes.idempotency[0]["created_at"] - IDEMPOTENCY_RETENTION
                conn.exec_driver_sql(f"DELETE FROM idempotency_keys WHERE created_at < {p}", (cutoff,))
                self._insert(conn, "idempotency_keys", changes.idempotency, ignore_duplicates=True)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        if changes.session_inserts and self.on_created is not None:
            self.on_created(len(changes.session_inserts))


class _Inserts:
    """The INSERT statements of one shape of event row: :data:`ROWS_PER_STATEMENT` rows per statement, and one row
    per statement for what is left over."""

    def __init__(self, columns: str, ph: str) -> None:
        ncols = columns.count(",") + 1
        one = f"({', '.join([ph] * ncols)})"
        head = f"INSERT INTO events ({columns}) VALUES "
        self.one = head + one
        self.many = head + ", ".join([one] * ROWS_PER_STATEMENT)
        self.width = ncols * ROWS_PER_STATEMENT  # values per full statement

    def write(self, conn: Any, rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` (in one transaction the caller holds)."""
        full = len(rows) // ROWS_PER_STATEMENT * ROWS_PER_STATEMENT
        if full:
            flat = tuple(chain.from_iterable(rows[:full] if full < len(rows) else rows))  # C loops; slices are tuples
            width = self.width
            conn.exec_driver_sql(self.many, [flat[i:i + width] for i in range(0, len(flat), width)])
        if full < len(rows):
            conn.exec_driver_sql(self.one, rows[full:])
