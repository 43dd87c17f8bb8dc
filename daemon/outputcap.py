"""The daemon's backstop for the per-session output cap (``limits.output``).

The cap bounds what a session's workflow writes into the record: its output, its log records and its custom events
(one account: runner/outputcap.py). The runner enforces it where those are made, but a runner runs the session's code
and can be made to ignore it (the code can write to the channel itself). Ingest therefore counts the same kinds
(:data:`CAPPED`) too — an ``output`` event's text, a ``log`` or ``custom`` event's stored JSON payload, in characters
— and, past the cap plus :data:`MARGIN`, stores no more of them: the first dropped event's slot records an
``output.truncated`` (``by: "daemon"``), and the session's end records the total dropped, per kind. Every other kind
(lifecycle, steps, approvals, agents, files, costs) is never counted nor dropped here. An honest runner never reaches
the backstop: it counts UTF-8 bytes of the same texts (never fewer), and its own warnings are few and small.

The cap of a session is learned from its ``session.created`` (or, after a daemon restart, from ingest's cursor
of the session, which :meth:`labd.store.writer.BatchWriter.load_cursor` filled from its row with the budget: the
row is not read again); sessions that ended are forgotten. What a run has accepted is kept with the session
(``sessions.output_chars``, written with the batch that counted it), so a daemon restart goes on from it instead of
allowing the cap again.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

__all__ = ["OutputCaps", "MARGIN", "CAPPED"]

#: output accepted beyond the cap before the daemon drops: the runner's own cut is exact, so this only
#: has to absorb a last partial chunk; anything past it is a runner that ignored its cap
MARGIN = 1 << 20
#: the kinds the cap counts (a tuple: ingest tests ``kind in CAPPED`` on whatever a runner sent, hashable or not)
CAPPED = ("output", "log", "custom")
_COUNTERS = {kind: (f"dropped.{kind}.events", f"dropped.{kind}.chars") for kind in CAPPED}


class _Usage:
    __slots__ = ("cap", "seen", "dropped", "kinds", "reported")

    def __init__(self, cap: int | None) -> None:
        self.cap = None if cap is None else cap + MARGIN
        self.seen = 0  # characters accepted
        self.dropped = 0  # characters dropped here
        self.kinds: dict[str, int] = {}  # ... per kind
        self.reported = False  # the first-drop marker was recorded


class OutputCaps:
    """Per-session output accounting for ingest (single-threaded, like ingest itself)."""

    def __init__(self, lookup: Callable[[str], tuple[int | None, int]], counters: dict[str, int]) -> None:
        #: session id -> its cap and the characters its run has had accepted, as ingest's cursor holds them (first
        #: sight after a restart)
        self._lookup = lookup
        self._usage: dict[str, _Usage] = {}
        self._counters = counters
        #: the sessions' accounts as they were before this batch, of those it touched (None: none then)
        self._undo: dict[str, _Usage | None] = {}

    def begin(self) -> None:
        """A new batch: what it changes can be taken back (:meth:`rollback`)."""
        self._undo.clear()

    def rollback(self) -> None:
        """The batch was not committed and is processed again from its items and frames: put the accounts back
        as they were before it (else its output counts again per try, dropping an honest session's output, and
        its first-drop marker and end total are lost with it)."""
        for sid, usage in self._undo.items():
            if usage is None:
                self._usage.pop(sid, None)
            else:
                self._usage[sid] = usage
        self._undo.clear()

    def _save(self, sid: str) -> None:
        """Keep ``sid``'s account as it was before this batch (once per batch)."""
        if sid in self._undo:
            return
        usage = self._usage.get(sid)
        if usage is not None:
            usage = copy.copy(usage)
            usage.kinds = dict(usage.kinds)
        self._undo[sid] = usage

    def learn(self, sid: str, kind: str, payload: Any) -> None:
        """Take the cap from a ``session.created`` as it goes by."""
        if kind == "session.created" and isinstance(payload, dict):
            self._save(sid)
            cap = (payload.get("limits") or {}).get("output")
            self._usage[sid] = _Usage(cap if isinstance(cap, int) and not isinstance(cap, bool) else None)

    def drop(self, sid: str, kind: str, size: int) -> dict[str, Any] | bool:
        """Account one runner event of a :data:`CAPPED` ``kind`` whose text is ``size`` characters. False: store
        it. True: drop it silently. A dict: drop it and record this ``output.truncated`` payload in its place (the
        first drop of the session). From the first drop on, every later one of these kinds is dropped too."""
        if sid not in self._undo:  # inline: ingest's hot loop calls this for every output, log and custom event
            self._save(sid)
        usage = self._usage.get(sid)
        if usage is None:
            cap, seen = self._lookup(sid)
            usage = self._usage[sid] = _Usage(cap)
            if usage.cap is not None:
                usage.seen = min(seen, usage.cap)
        if usage.cap is None:
            return False
        if usage.seen + size <= usage.cap:
            usage.seen += size
            return False
        usage.seen = usage.cap  # nothing more fits
        usage.dropped += size
        usage.kinds[kind] = usage.kinds.get(kind, 0) + size
        events, chars = _COUNTERS[kind]
        self._counters[events] = self._counters.get(events, 0) + 1
        self._counters[chars] = self._counters.get(chars, 0) + size
        if usage.reported:
            return True
        usage.reported = True
        return {"cap": usage.cap - MARGIN, "by": "daemon"}

    def store_into(self, cursors: dict[str, Any]) -> None:
        """Before a batch is committed: put the counts it changed on the sessions' cursors, which the writer stores
        with the batch (``sessions.output_chars``; a run that ended keeps its last count)."""
        for sid in self._undo:
            cur, usage = cursors.get(sid), self._usage.get(sid)
            if cur is not None and usage is not None:
                cur.output_chars = usage.seen

    def final(self, sid: str) -> dict[str, Any] | None:
        """At the session's end: the ``output.truncated`` total to record if the backstop dropped anything;
        forgets the session."""
        self._save(sid)
        usage = self._usage.pop(sid, None)
        if usage is None or not usage.dropped or usage.cap is None:
            return None
        return {"cap": usage.cap - MARGIN, "dropped": usage.dropped, "by": "daemon", "kinds": usage.kinds}
