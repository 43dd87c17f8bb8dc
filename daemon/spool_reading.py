"""Ingest's side reading sessions' spools: what an ended runner left unsent, and a gap its live runner cannot fill.

A mixin of :class:`labd.daemon.ingest.Ingest` (it runs on the ingest thread). A runner writes every event to its
session's spool before sending it (runner/spool.py). When the runner has ended, what its spool holds beyond the last
event stored is staged from the file (:meth:`SpoolReading._ingest_spool`); while it runs, a gap that resend requests
have not filled (the runner had those events acknowledged: a store restored from a backup) is filled from it
(:meth:`SpoolReading._fill_gap`). The spool is the session's own file, written by code the daemon does not trust:
every read is bounded (labd.daemon.spools).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from labd.daemon.ingest_batch import Batch
from labd.daemon.spools import SpoolChunk, same_file, spool_ino, spool_of, spooled_events
from labd.ipc.units import shortened
from labd.store.projections import SessionCursor

__all__ = ["GAP_SPOOL_MAX_S", "GAP_SPOOL_S", "SPOOL_PASS_BYTES", "SPOOL_PASS_EVENTS", "SpoolReading", "gap_spool_s"]

#: a session's leftover spool is staged at most this much per pass of the ingest loop (the rest in later ones),
#: so that the batch, and the daemon's memory, stay as bounded as for events sent live (ingest.MAX_BATCH*)
SPOOL_PASS_EVENTS = 5000
SPOOL_PASS_BYTES = 4 * 1024 * 1024

GAP_SPOOL_S = 5.0  # a gap that resend requests have not filled by then is filled from the session's spool
#: the longest wait between two fills from a spool that filled nothing (:meth:`SpoolReading._fill_gap`)
GAP_SPOOL_MAX_S = 300.0


def gap_spool_s() -> float:
    """:data:`GAP_SPOOL_S`, or the tests' shorter ``LABD_GAP_SPOOL_S``."""
    return shortened(GAP_SPOOL_S, "LABD_GAP_SPOOL_S", floor=0.1)


class SpoolReading:
    """Spools -> staged events (mixin of the ingest thread; see the module docstring)."""

    # provided by Ingest
    log: Any
    sessions_dir: Path | None
    max_message: int
    #: session -> (runner_seq, byte offset, inode) where reading its spool goes on (a spool read over several passes)
    _spool_at: dict[str, tuple[int, int, int]]
    _gap_at: dict[str, float]  # session whose runner's frames show a gap -> when to fill it from its spool
    _gap_wait: dict[str, float]  # session -> the last wait after a fill from its spool that filled nothing

    def count(self, name: str, n: int = 1) -> None:
        raise NotImplementedError

    def _on_events(self, cur: SessionCursor, identity: bytes | None, evs: list[Any], b: Batch,
                   raw: bytes | None = None) -> None:
        raise NotImplementedError

    def _ingest_spool(self, cur: SessionCursor, b: Batch, live: bool = False) -> bool:
        """Stage what the session's spool holds beyond the last runner event we have (its runner has ended:
        the file is complete), at most a batch's worth (:data:`SPOOL_PASS_EVENTS`, :data:`SPOOL_PASS_BYTES`).
        True once the spool is all staged; False if more is left for the next pass. Exactly once: records at
        or below ``runner_seq`` are skipped. The spool is the session's own file, written by code the daemon
        does not trust: no record is read whole beyond what one message may carry (``max_message``)."""
        if self.sessions_dir is None:
            return True
        after = cur.runner_seq
        path = spool_of(self.sessions_dir, cur.id)
        # Where the last pass stopped, if it went through everything before it: only once the runner has ended,
        # when its spool no longer changes (a live runner empties or rewrites it behind its acknowledgements, so a
        # place in it means nothing a moment later). A gap fill (``live``) reads from the start, a bounded amount.
        start = 0
        if not live:
            at_seq, at, ino = self._spool_at.get(cur.id, (-1, 0, 0))  # every record before ``at`` is <= at_seq
            start = at if 0 <= at_seq <= after and same_file(path, ino, at) else 0
        ino = spool_ino(path)
        chunk = SpoolChunk(end=start, skipped_to=start)
        try:
            chunk = spooled_events(path, after, start=start, max_event=self.max_message,
                                   max_events=SPOOL_PASS_EVENTS, max_bytes=SPOOL_PASS_BYTES)
        except OSError as exc:
            self.count("spool_unreadable")
            self.log.error("spool unreadable", session_id=cur.id, error=str(exc)[:300])
        if chunk.events:
            self._on_events(cur, None, chunk.events, b)
            self.count("spool_events_ingested", cur.runner_seq - after)
            self.log.info("spool ingested", session_id=cur.id, events=cur.runner_seq - after, more=chunk.more)
        placed = not chunk.events or cur.runner_seq >= chunk.events[-1][0]
        if live:
            return not (chunk.more and chunk.events and placed)  # more to read only once it placed some
        if placed and chunk.end > start:  # (skipped, or placed, everything before chunk.end)
            self._spool_at[cur.id] = (cur.runner_seq, chunk.end, ino)
        elif chunk.skipped_to > start:
            self._spool_at[cur.id] = (after, chunk.skipped_to, ino)
        # more to read where it stopped; or done (or nothing more can be placed: a gap in a forged spool)
        return not (chunk.more and placed and chunk.end > start)

    def _fill_gap(self, cur: SessionCursor, b: Batch) -> None:
        """A gap its runner has not filled for :func:`gap_spool_s` seconds of resend requests: the runner cannot
        send those events again (it had them acknowledged: a store restored from a backup taken while the session
        ran), so they are taken from the session's spool, on this machine, which holds every event its runner
        wrote. Before, the output stalled until the session ended, with no word (admin retest). A spool longer than
        a pass is read on at the next frame; one that fills nothing (a session's code can make its spool so, and
        the gap) is tried again after twice the last wait, up to :data:`GAP_SPOOL_MAX_S` (attack review: every 5 s,
        each pass reading what it could make as long as it liked)."""
        now = time.monotonic()
        due = self._gap_at.setdefault(cur.id, now + gap_spool_s())
        if now < due or self.sessions_dir is None \
                or not spool_of(self.sessions_dir, cur.id).is_file():  # a Ray runner's spool is on its node
            return
        before = cur.runner_seq
        more = not self._ingest_spool(cur, b, live=True)
        if cur.runner_seq > before:
            self.count("gaps_filled_from_spool")
            self.log.warning("a runner could not send again events the store lacks (a store restored from a "
                             "backup?): taken from the session's spool", session_id=cur.id,
                             events=cur.runner_seq - before)
        if more:  # read on at the next frame
            self._gap_at[cur.id] = now
            return
        wait = gap_spool_s() if cur.runner_seq > before else \
            min(self._gap_wait.get(cur.id, gap_spool_s()) * 2, GAP_SPOOL_MAX_S)
        self._gap_wait[cur.id] = wait
        self._gap_at[cur.id] = now + wait
