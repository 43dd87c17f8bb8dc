"""The daemon's bound on what one session records of labd's own kinds (``[daemon] max_session_record``).

What a workflow writes itself (output, log records, custom events) is bounded by the session's output cap
(daemon/outputcap.py). Everything else a runner sends is labd's own record of the work: steps, agents, LLM calls and
their requests, tools, files, costs, approvals. An honest runner makes those through labd's instrumentation, but a
runner runs the session's code, and that code can write to the channel itself: before this bound, a workflow could
send ten-megabyte ``step.started`` names or agent messages for ever and fill the disk under the database.

So ingest counts, per session, the bytes it stores of the events a runner sent that the output cap does not count —
each row's JSON text plus the blobs it brought (full-fidelity texts kept apart, ``store.blobs``). Once a session is
past the bound, ingest notes it to the supervisor, which records ``limit.exceeded`` (``limit: "recorded events"``)
and stops the session, and from then on stores none of those events of that session (``dropped.record.events``).
At most one event is stored past the bound (the one that crossed it: at most ``max_message``). Lifecycle events the
daemon records (the session's end among them) are never counted nor dropped.

The count is kept with the session (``sessions.record_bytes``, written in the same transaction as the events it
counts), so a daemon restart goes on from it; it starts again when a session's run ends (a resume is a new run).
The default, 8 GiB, should be far above what a session's instrumentation records (an estimate, not measured: an LLM
call's request with a long history is ~0.1-1 MB; a day of such calls every minute is ~1 GB); ``"none"`` removes the
bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["RecordCaps", "DEFAULT_MAX_SESSION_RECORD"]

#: the default ``[daemon] max_session_record``
DEFAULT_MAX_SESSION_RECORD = 8 * 1024**3


class RecordCaps:
    """Per-session byte counts of labd's own kinds recorded from runners (ingest's thread only)."""

    def __init__(self, limit: int | None, counters: dict[str, int],
                 stored: Callable[[str], int] = lambda sid: 0) -> None:
        self.limit = limit  # None: no bound
        #: session id -> its count as the store holds it (ingest's cursor of it): where a count goes on from
        self._stored = stored
        self._used: dict[str, int] = {}
        self._over: set[str] = set()
        self._counters = counters
        #: the counts as they were before this batch, of the sessions it changed (:meth:`begin`, :meth:`rollback`)
        self._undo: dict[str, tuple[int, bool]] = {}

    def begin(self) -> None:
        """A new batch: what :meth:`add` counts from here on can be taken back (:meth:`rollback`)."""
        self._undo.clear()

    def rollback(self) -> None:
        """The batch was not committed and is processed again from its frames: take back what it counted (else
        its events count twice, and a crossing found in it is never told again: its note went with the batch)."""
        for sid, (used, over) in self._undo.items():
            self._used[sid] = used
            if not over:
                self._over.discard(sid)
        self._undo.clear()

    def add(self, sid: str, size: int) -> bool:
        """Count ``size`` stored bytes of ``sid``'s; True the first time the session is past the bound (then tell
        the supervisor, :meth:`usage`)."""
        if self.limit is None:
            return False
        before = self._used.get(sid)
        if before is None:  # first sight since the daemon started, or since the run began
            before = self._stored(sid)
        if sid not in self._undo:
            self._undo[sid] = (before, sid in self._over)
        used = self._used[sid] = before + size
        if used <= self.limit or sid in self._over:
            return False
        self._over.add(sid)
        return True

    def store_into(self, cursors: dict[str, Any]) -> None:
        """Before a batch is committed: put the counts it changed on the sessions' cursors, which the writer stores
        with the batch (``sessions.record_bytes``)."""
        for sid in self._undo:
            cur = cursors.get(sid)
            if cur is not None:
                cur.record_bytes = self._used.get(sid, 0)

    def over(self, sid: str) -> bool:
        """Whether ``sid`` is past the bound: its runner's events of these kinds are no longer stored."""
        return sid in self._over

    def dropped(self) -> None:
        """Count one event not stored because its session was past the bound."""
        self._counters["dropped.record.events"] = self._counters.get("dropped.record.events", 0) + 1

    def usage(self, sid: str) -> tuple[int, int]:
        """``(bytes counted, the bound)`` of a session (for the ``limit.exceeded`` it leads to)."""
        return self._used.get(sid, 0), self.limit or 0

    def forget(self, sid: str) -> None:
        """The session's run has ended: its count goes."""
        self._used.pop(sid, None)
        self._over.discard(sid)
        self._undo.pop(sid, None)
