"""Ingest's commit of a batch, and what it does when the store cannot take one.

A mixin of :class:`labd.daemon.ingest.Ingest` (it runs on the ingest thread). A batch is committed in one
transaction, then published, acknowledged and notified (labd.daemon.delivery). A store that is away (a PostgreSQL
restart, a full disk, a lock held elsewhere) makes the batch wait, trying again with a growing delay, and then be
processed again whole (runners keep what is unacknowledged; daemon items already committed are not processed
again); a store that refuses the batch (a value it cannot hold) has it written again event by event ("safe mode"),
each refused event recorded as ``event.rejected`` in its place.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy.exc as sa_exc

from labd.daemon.ingest_batch import Batch
from labd.daemon.outputcap import OutputCaps
from labd.daemon.recordcap import RecordCaps
from labd.store.db import UNREACHABLE, unreachable
from labd.store.projections import SessionCursor

if TYPE_CHECKING:
    from labd.store.search import IndexHints
    from labd.store.writer import BatchWriter

__all__ = ["Committing", "GivenUp", "REFUSED", "STORE_RETRY_S", "STORE_RETRY_MAX_S"]

STORE_RETRY_S, STORE_RETRY_MAX_S = 0.5, 5.0  # waits between tries of a batch the store could not take
#: what a store that is there says of a batch it cannot hold (the batch is then written event by event)
REFUSED = (sa_exc.StatementError, OverflowError, ValueError, TypeError)


class GivenUp(Exception):
    """The daemon stops while the store cannot take a batch: the batch is not written."""


class Committing:
    """Batches -> the store, through its absences and refusals (mixin of the ingest thread)."""

    # provided by Ingest
    writer: BatchWriter
    index_hints: IndexHints
    log: Any
    cursors: dict[str, SessionCursor]
    records: RecordCaps
    outcap: OutputCaps
    stopping: threading.Event
    beat: float
    store_down: bool
    store_down_since: float
    store_error: str
    _safe: bool
    _items_done: int
    _later: list[tuple[Any, ...]]
    _process: Callable[..., Batch]
    _stage: Callable[..., None]
    _delete_sessions: Callable[..., None]
    _job: Callable[..., None]
    _send_batch: Callable[[Batch], None]

    def count(self, name: str, n: int = 1) -> None:
        raise NotImplementedError

    def _write(self, batch: Batch, items: list[tuple[Any, ...]], frames_list: list[list[bytes]],
               broken: Exception | None = None) -> None:
        """Commit a batch, then publish, acknowledge and notify. A batch the store refuses is written again
        event by event, the refused events replaced by ``event.rejected`` rows; while the store is
        unreachable, the batch waits and is then processed again (runners keep what is unacknowledged).
        ``broken``: the store went away while the batch was processed (it is processed again, whole)."""
        delay = 0.0  # grows over consecutive failures: a store that reconnects but cannot write (a full disk)
        again = False  # process the batch again first (inside the try: the store can go away again meanwhile)
        skip = 0  # daemon items already committed one by one (safe mode) when the store went away: not again
        try:
            while True:
                try:
                    if broken is not None:
                        exc, broken = broken, None
                        raise exc
                    if again:
                        again = False
                        batch = self._process(items, frames_list, skip=skip)
                        if self._safe:
                            break  # written event by event as it was processed
                    if batch.size() or batch.changes.session_updates or batch.changes.session_inserts:
                        self.records.store_into(self.cursors)  # the bounds' counts, committed with what they count
                        self.outcap.store_into(self.cursors)
                        self.writer.commit(batch.rows, batch.changes, self.cursors, batch.plain, batch.noded)
                    break
                except UNREACHABLE as exc:
                    if not self.store_down:
                        self.store_down_since, self.store_error = time.monotonic(), str(exc).splitlines()[0][:300]
                    self.store_down = True
                    self.count("store_unavailable")
                    if delay == 0.0 or delay >= STORE_RETRY_MAX_S:  # said once, then once per longest wait
                        self.log.error("store unavailable; waiting for it", error=str(exc)[:300])
                    delay = min(max(delay * 2, STORE_RETRY_S), STORE_RETRY_MAX_S)
                    self._wait_for_store(delay)
                    # every cursor is read again: a pass that did not finish may have read or changed any (and in
                    # safe mode committed some of its events one by one)
                    self.cursors.clear()
                    self.records.rollback()
                    self.outcap.rollback()
                    if self._safe:  # (a runner's events are kept from twice by their src_seq; a daemon's, by this)
                        skip = self._items_done
                    again = True
                except REFUSED as exc:
                    if self._safe:
                        raise
                    self.count("store_refused_batches")
                    self.log.error("store refused a batch; writing it event by event", error=str(exc)[:300])
                    self._forget(batch)
                    self.records.rollback()
                    self.outcap.rollback()
                    self._safe = again = True
        finally:
            self._safe = False
        if delay:
            self.store_down = False
            self.log.info("store writable again")
        self.count("events_persisted", batch.count)
        self.index_hints.committed()  # the indexer looks at the store again (store/search.py)
        self._later = batch.later
        for sids, reply_to in batch.deletes:
            self._delete_sessions(sids, reply_to, batch)
        for job in batch.jobs:
            self._job(job, batch)
        self._send_batch(batch)

    def _wait_for_store(self, delay: float) -> None:
        """Sleep ``delay`` seconds (then more, doubling up to STORE_RETRY_MAX_S) until the store reconnects; raise
        :class:`GivenUp` once the daemon stops (a full disk must not hold its stop for ever)."""
        while True:
            self.beat = time.monotonic()  # waiting for the store is healthy: a restart would not bring it back
            if self.stopping.wait(delay):
                raise GivenUp
            try:
                self.writer.reconnect()
                return
            except UNREACHABLE:
                delay = min(delay * 2, STORE_RETRY_MAX_S)

    def _forget(self, batch: Batch) -> None:
        """Drop cached cursors a failed batch touched: they are reloaded from the store."""
        touched = {r[0] for rows in (batch.rows, batch.plain, batch.noded) for r in rows} | set(
            batch.changes.session_updates) | {
            r["id"] for r in batch.changes.session_inserts}
        for sid in touched:
            self.cursors.pop(sid, None)

    def _append(self, cur: SessionCursor, ts: float, kind: str, src: str, src_seq: int | None,
                node_id: str | None, parent: int | None, payload: dict[str, Any], b: Batch) -> bool:
        """Add one event (and its projection changes) to the batch; in safe mode, commit it on its own.
        Returns False if the store refused it (it is then recorded as ``event.rejected``)."""
        if not self._safe:
            self._stage(cur, ts, kind, src, src_seq, node_id, parent, payload, b)
            b.count += 1
            return True
        one = Batch()
        self._stage(cur, ts, kind, src, src_seq, node_id, parent, payload, one)
        try:
            self.writer.commit(one.rows, one.changes, self.cursors, one.plain, one.noded)
        except REFUSED as exc:
            if unreachable(exc):  # the store went away, not this event: the batch waits for it (_write)
                raise
            self.count("store_rejected")
            self.log.error("store refused an event", session_id=cur.id, kind=kind, error=str(exc)[:300])
            # Back to what the store has (in place: callers hold this cursor), then skip the event.
            fresh = self.writer.load_cursor(cur.id)
            if fresh is None:
                self.cursors.pop(cur.id, None)
                return False
            cur.__dict__.update(fresh.__dict__)
            if src_seq is not None and src == "r":
                cur.runner_seq = max(cur.runner_seq, src_seq)
            marker = Batch()
            # its count stays (the bytes were offered); a max_session_record crossing it made is still told
            marker.notes.extend(n for n in one.notes if n[0] == "record")
            # the event is not recorded, but an object it brought that the home could not keep is still missing there
            marker.to_runners.extend(t for t in one.to_runners if t[1] == "objects.missing")
            self._stage(cur, time.time(), "event.rejected", src, src_seq, None, None,
                        {"kind": kind[:64], "reason": f"the store refused it: {type(exc).__name__}"}, marker)
            self.writer.commit(marker.rows, marker.changes, self.cursors, marker.plain, marker.noded)
            b.merge(marker)
            return False
        b.merge(one)
        return True
