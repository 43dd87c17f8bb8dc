"""Full-text search over the record: sessions (name, workflow, task), steps, agent messages, code, files, approvals,
results and errors (a failed step's, a failed session's with its traceback).

The index is derived data, like a projection, but kept outside the store: an SQLite FTS5 database
(``<home>/search.db``) that an indexer fills from the events, whichever backend holds the record. So ingest —
the single writer of the store — does no extra work per event, the same search works on SQLite and PostgreSQL
stores, and the index can be deleted and rebuilt from the events at any time. Each session's indexed seq is kept
in the index itself, in the same transaction as its documents, so indexing is exactly once across restarts.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, bindparam, select

from labd.store.growth import GrowthScan
from labd.store.schema import events, sessions

__all__ = ["SearchIndex", "IndexHints", "KINDS", "MAX_WORDS", "QueryTooLong", "query_words"]

#: the event kinds that make documents (see _doc)
KINDS = ("session.created", "step.started", "agent.message", "code.execution", "file.created", "file.changed",
         "approval.requested", "session.finished", "step.finished", "session.ended")
#: the index's layout: 2 added the ``error`` documents (indexes made before get them once: SearchIndex._backfill)
INDEX_VERSION = 2
#: built once (statement construction was a large share of an update with hundreds of sessions)
_NEW_EVENTS = (select(events.c.seq, events.c.ts, events.c.kind, events.c.node_id, events.c.payload)
               .where(events.c.session_id == bindparam("sid"), events.c.seq > bindparam("since"),
                      events.c.seq <= bindparam("last"), events.c.kind.in_(KINDS)).order_by(events.c.seq))
FORGET_CHUNK = 50_000  # deleted sessions per statement that drops their documents (each reads the whole index)
FLUSH_DOCS = 5000  # documents per index transaction (many sessions' worth share one commit)
MAX_BODY = 20_000  # characters of one document that are indexed
_SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5(
    title, body, type UNINDEXED, session_id UNINDEXED, seq UNINDEXED, node_id UNINDEXED, ts UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 2');
CREATE TABLE IF NOT EXISTS indexed (session_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""


_KIND_SET = frozenset(KINDS)
MAX_HINTS = 50_000  # sessions with hints; past it they are all dropped (their new events are read, as without)


class IndexHints:
    """What ingest knows about the rows it wrote: which sessions got no indexable event since a seq.

    A bulk workflow writes hundreds of thousands of ``custom``/``output``/``log`` events a second, and the indexer
    used to read every one of them back to find the few indexable ones (~3 % of a core beside ingest). Ingest
    notes, for each session whose rows it writes, the first seq it wrote (:meth:`writing`) and the highest seq
    of an indexable kind (:meth:`staged`), before the rows are committed; the indexer skips reading a session's
    new rows when this process wrote all of them and none is indexable (:meth:`nothing_after`). Rows an
    earlier daemon wrote, and sessions whose hints were dropped, are read as before. Written by the ingest
    thread, read by the indexer's: single dictionary operations on tuples (atomic under the GIL)."""

    def __init__(self, limit: int = MAX_HINTS) -> None:
        self.limit = limit
        #: batches ingest committed so far (:meth:`committed`): the indexer skips a pass when none was since its last
        self.commits = 0
        #: session -> (the first seq this process wrote or will write, the highest indexable seq staged; 0: none)
        self._hints: dict[str, tuple[int, int]] = {}

    def writing(self, sid: str, next_seq: int) -> None:
        """Ingest is about to stage rows of ``sid`` from ``next_seq`` on (called before they are staged; the
        indexable ones among them are noted by :meth:`staged`)."""
        hints = self._hints
        if sid not in hints:
            if len(hints) >= self.limit:
                hints.clear()  # bounded: what is dropped is read from the store again
            hints[sid] = (next_seq, 0)

    def staged(self, sid: str, seq: int, kind: str) -> None:
        """A row of ``kind`` at ``seq`` is being staged (before its commit)."""
        hint = self._hints.get(sid)
        if hint is None:
            self.writing(sid, seq)
            hint = (seq, 0)
        if seq > hint[1] and kind in _KIND_SET:
            self._hints[sid] = (hint[0], seq)

    def committed(self) -> None:
        """Ingest committed a batch (called after the commit, so the indexer then finds its rows)."""
        self.commits += 1

    def nothing_after(self, sid: str, since: int) -> bool:
        """True if every row of ``sid`` after ``since`` that is committed now was written by this process and
        none of them is of an indexable kind (false when unsure)."""
        hint = self._hints.get(sid)
        return hint is not None and hint[0] <= since + 1 and hint[1] <= since

    def forget(self, sids: Iterable[str]) -> None:
        """Deleted sessions."""
        for sid in sids:
            self._hints.pop(sid, None)


def _doc(kind: str, p: dict[str, Any]) -> tuple[str, str, str] | None:
    """(type, title, body) of one event, or None if it holds nothing worth finding."""
    if kind == "session.created":
        params = " ".join(f"{k} {v}" for k, v in (p.get("params") or {}).items() if isinstance(v, str | int | float))
        return "session", f"{p.get('name', '')} {p.get('workflow', '')}", params
    if kind == "step.started":
        return "step", str(p.get("name", "")), str(p.get("kind", ""))
    if kind == "agent.message":
        return "message", str(p.get("agent", "")), str(p.get("content", ""))
    if kind == "code.execution":
        return "code", str(p.get("agent", "")), f"{p.get('code', '')}\n{p.get('output', '')}"
    if kind in ("file.created", "file.changed"):
        path = str(p.get("path", ""))
        return "file", path, f"{path.replace('/', ' ').replace('.', ' ').replace('_', ' ')} {p.get('kind', '')}"
    if kind == "approval.requested":
        return "approval", str(p.get("kind", "")), str(p.get("prompt", ""))
    if kind == "session.finished":
        if p.get("outcome") == "failed" and p.get("error"):  # what went wrong is what people search for
            return "error", "session failed", f"{p['error']}\n{p.get('traceback') or ''}"
        result = p.get("result")
        return "result", str(p.get("outcome", "")), result if isinstance(result, str) else orjson.dumps(result).decode()
    if kind == "step.finished" and p.get("error"):
        return "error", str(p.get("name", "")), str(p["error"])
    if kind == "session.ended" and p.get("status") in ("failed", "lost") and p.get("reason") and not str(
            p["reason"]).startswith("workflow failed:"):  # an end its runner did not report: a crash, a limit's kill
        return "error", f"session {p['status']}", str(p["reason"])
    return None


#: the most different words a query may have (each a prefix term that FTS5 looks up on its own): a longer query is
#: refused (:class:`QueryTooLong`), not cut short, since every word must match
MAX_WORDS = 20


class QueryTooLong(ValueError):
    """A search query with more than :data:`MAX_WORDS` different words."""


def query_words(text: str) -> list[str]:
    """The words of a query, each once (case aside: the index folds case)."""
    words: dict[str, str] = {}
    for w in re.findall(r"\w+", text, flags=re.UNICODE):
        words.setdefault(w.lower(), w)
    return list(words.values())


def _fts_query(text: str) -> str:
    """User text -> an FTS5 query: each word a quoted prefix term, all required (no FTS syntax injection). Raises
    :class:`QueryTooLong` beyond :data:`MAX_WORDS` different words."""
    words = query_words(text)
    if len(words) > MAX_WORDS:
        raise QueryTooLong(f"the query has {len(words)} different words; a search takes at most {MAX_WORDS} (every "
                           "word must match): leave out the least telling ones")
    return " ".join(f'"{w}"*' for w in words)


class SearchIndex:
    """The FTS5 index of one home; :meth:`update` indexes what the store has beyond each session's mark."""

    def __init__(self, path: Path, engine: Engine, hints: IndexHints | None = None) -> None:
        self.path = path
        self.engine = engine
        self.hints = hints  # from ingest: sessions whose new rows need not be read (none indexable)
        self._lock = threading.Lock()  # one connection, used by the indexer thread and request handlers
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._db.execute("PRAGMA journal_mode=WAL")
        if self._db.execute("PRAGMA user_version").fetchone()[0] < INDEX_VERSION and not self._db.execute(
                "SELECT 1 FROM indexed LIMIT 1").fetchone():
            self._db.execute(f"PRAGMA user_version = {INDEX_VERSION}")  # a new index: nothing to bring up to date
        self._marks: dict[str, int] | None = None  # session -> indexed seq, loaded once, then kept in step
        self.scan = GrowthScan()  # which sessions' records may have grown (store/growth.py)
        #: ``hints.commits`` read before the last update that left nothing for later (None: none yet)
        self._indexed_commits: int | None = None
        #: sessions forgotten while an update ran (None: no update running): that update read them before their
        #: deletion and must not commit their documents back (it would resurrect a deleted session's hits)
        self._forgotten_meanwhile: set[str] | None = None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def update(self, limit_sessions: int = 500) -> int:
        """Index new events of sessions whose record grew; returns the number of documents added.

        Reads the whole sessions table about once a minute (:class:`~labd.store.growth.GrowthScan`); in between
        only the sessions that are live or ended since the previous scan (both indexed columns), which are the only
        ones whose record grows, and nothing at all when ingest committed nothing since the last update that left
        nothing for later (``hints.commits``: 500 idle sessions made a query a second, 0.17 % of a core)."""
        commits = self.hints.commits if self.hints is not None else None
        if commits is not None and commits == self._indexed_commits and not self.scan.due():
            return 0
        with self._lock:
            if self._marks is None:
                self._marks = dict(self._db.execute("SELECT session_id, seq FROM indexed").fetchall())
            self._forgotten_meanwhile = set()
        try:
            if self._db.execute("PRAGMA user_version").fetchone()[0] < INDEX_VERSION:
                self._backfill(self._marks)  # before anything new is indexed: see _backfill
            added = self._update(self._marks, limit_sessions)
            if self.scan.full_at:  # nothing was left for the next pass (a cut asks for a full scan next)
                self._indexed_commits = commits
            return added
        finally:
            with self._lock:
                self._forgotten_meanwhile = None

    def _update(self, marks: dict[str, int], limit_sessions: int) -> int:
        with self.engine.connect() as conn:
            rows, full = self.scan.read(conn, sessions.c.id, sessions.c.last_seq)
            if full:  # every session: those the index has and the store no longer has were
                # deleted while their forget could not run (the daemon was killed after the deletion's commit)
                present = {sid for sid, _ in rows}
                stale = [sid for sid in marks if sid not in present]
                if stale:
                    self.forget(stale)
            todo = [(sid, last) for sid, last in rows if last > marks.get(sid, 0)]
            if len(todo) > limit_sessions:  # the rest next time: do not let the next scan skip them
                todo = todo[:limit_sessions]
                self.scan.again()
            added = 0
            docs: list[tuple[Any, ...]] = []
            done: list[tuple[str, int]] = []
            hints = self.hints
            for sid, last in todo:
                since = marks.get(sid, 0)
                if hints is not None and hints.nothing_after(sid, since):
                    done.append((sid, last))  # nothing indexable in (since, last]: only the mark moves
                    continue
                evs = conn.execute(_NEW_EVENTS, {"sid": sid, "since": since, "last": last}).all()
                for seq, ts, kind, node_id, payload in evs:
                    d = _doc(kind, orjson.loads(payload))
                    if d is not None:
                        docs.append((d[1][:500], d[2][:MAX_BODY], d[0], sid, seq, node_id, ts))
                done.append((sid, last))
                if len(docs) >= FLUSH_DOCS:
                    added += self._commit(docs, done)
                    docs, done = [], []
            if done:
                added += self._commit(docs, done)
        return added

    def _backfill(self, marks: dict[str, int]) -> None:
        """Give an index made before :data:`INDEX_VERSION` 2 the ``error`` documents of the events it indexed
        already (the failed steps and sessions up to each session's mark; later ones come as any event does). Runs
        before the first update indexes anything new, so every ``error`` document an index at version 1 holds is
        from a backfill a stop interrupted: those are dropped and the backfill starts again (exactly once)."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM docs WHERE type = 'error'")
        kinds = ("step.finished", "session.finished", "session.ended")
        query = (select(events.c.session_id, events.c.seq, events.c.ts, events.c.kind, events.c.node_id,
                        events.c.payload).where(events.c.kind.in_(kinds)))
        docs: list[tuple[Any, ...]] = []
        with self.engine.connect() as conn:
            for sid, seq, ts, kind, node_id, payload in conn.execution_options(yield_per=2000).execute(query):
                if seq > marks.get(sid, 0):
                    continue  # not indexed yet: the update takes it
                d = _doc(kind, orjson.loads(payload))
                if d is not None and d[0] == "error":
                    docs.append((d[1][:500], d[2][:MAX_BODY], d[0], sid, seq, node_id, ts))
                if len(docs) >= FLUSH_DOCS:
                    self._commit(docs, [])
                    docs = []
        with self._lock, self._db:
            gone = self._forgotten_meanwhile or set()
            self._db.executemany("INSERT INTO docs (title, body, type, session_id, seq, node_id, ts) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)", [d for d in docs if d[3] not in gone])
            self._db.execute(f"PRAGMA user_version = {INDEX_VERSION}")

    def _commit(self, docs: list[tuple[Any, ...]], done: list[tuple[str, int]]) -> int:
        """Documents and the marks of the sessions they came from, in one transaction: exactly once. One
        commit for many sessions: with hundreds of sessions recording a sample now and then, a commit per
        session was most of an idle daemon's CPU."""
        with self._lock, self._db:
            gone = self._forgotten_meanwhile
            if gone:  # deleted after this update read them: their documents stay out
                docs = [d for d in docs if d[3] not in gone]
                done = [m for m in done if m[0] not in gone]
            self._db.executemany("INSERT INTO docs (title, body, type, session_id, seq, node_id, ts) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)", docs)
            self._db.executemany("INSERT INTO indexed (session_id, seq) VALUES (?, ?) ON CONFLICT(session_id) "
                                 "DO UPDATE SET seq = excluded.seq", done)
        if self._marks is not None:  # in step with the committed marks
            self._marks.update(done)
        return len(docs)

    def forget(self, sids: Iterable[str]) -> None:
        """Drop deleted sessions from the index (retention). ``session_id`` is not an indexed column of an FTS5
        table, so each statement reads every document: one statement for many sessions, not one per 500 (5,000
        sessions from a million documents: 1.1 s against 3.4 s; docs/benchmarks.md §66)."""
        ids = list(sids)
        with self._lock, self._db:
            for start in range(0, len(ids), FORGET_CHUNK):
                chunk = orjson.dumps(ids[start:start + FORGET_CHUNK]).decode()
                self._db.execute("DELETE FROM docs WHERE session_id IN (SELECT value FROM json_each(?))", (chunk,))
                self._db.execute("DELETE FROM indexed WHERE session_id IN (SELECT value FROM json_each(?))",
                                 (chunk,))
            for sid in ids:
                if self._marks is not None:
                    self._marks.pop(sid, None)
            if self._forgotten_meanwhile is not None:
                self._forgotten_meanwhile.update(ids)
        if self.hints is not None:
            self.hints.forget(ids)

    def search(self, text: str, *, types: list[str] | None = None, session_ids: set[str] | None = None,
               limit: int = 50) -> list[dict[str, Any]]:
        """Best matches first: ``{type, session_id, seq, node_id, ts, title, snippet}``. ``session_ids``: only hits
        in these sessions (the filter is part of the query: the best ``limit`` hits among them, however many better
        hits other sessions have). Raises :class:`QueryTooLong` for a query of more than :data:`MAX_WORDS` words."""
        query = _fts_query(text)
        if not query or (session_ids is not None and not session_ids):
            return []
        sql = ("SELECT type, session_id, seq, node_id, ts, title, snippet(docs, 1, '[', ']', ' … ', 12) "
               "FROM docs WHERE docs MATCH ?")
        args: list[Any] = [query]
        if types:
            sql += f" AND type IN ({','.join('?' * len(types))})"
            args += types
        if session_ids is None:
            sql += " ORDER BY rank LIMIT ?"  # FTS5 ranks every match and stops at the limit
        else:
            # The session filter in the query (one parameter, however many sessions), then bm25() (what rank is)
            # of the matches that pass. Measured, 200,000 matches of one word: 0.4 s unfiltered; 0.7 s filtered,
            # whether few or all pass. ORDER BY rank (FTS5 ranks all, then the filter) took 0.4 s when all pass
            # but 1.1 s when few do: the same work bound (every match), a better worst case.
            sql += " AND session_id IN (SELECT value FROM json_each(?)) ORDER BY bm25(docs) LIMIT ?"
            args.append(orjson.dumps(list(session_ids)).decode())
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [{"type": t, "session_id": sid, "seq": seq, "node_id": node, "ts": ts, "title": title, "snippet": snip}
                for t, sid, seq, node, ts, title, snip in rows]
