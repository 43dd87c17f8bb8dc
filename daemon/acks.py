"""When ingest acknowledges a runner's events: at once when the runner needs it, else at most every
:data:`ACK_INTERVAL_S` per session.

An ack lets a runner drop what the store has committed from its memory and its spool; nothing on a runner
waits for one except its end (``Channel.close``) and back-pressure (a full backlog). Acking every ingest batch
woke a busy runner's channel thread once more per send, only to read the ack: about half of that thread's
passes and CPU in ``bench_tracking.py`` (docs/design.md, "Acks paced per session"). So an ack is sent at once
for a runner's ``hello``, for a resend request, and for an ``events`` frame that asks for it (``"ack": true``:
the runner is closing, or its backlog is a quarter full); otherwise the first frame after a quiet interval is
acked at once and later ones within the interval share one ack at its end (:meth:`AckPacer.owed`).

Owned by the ingest thread (no locking). Memory: one float per session acked in the last interval, plus one per
session owed an ack; entries older than the interval mean the same as none and are dropped.
"""

from __future__ import annotations

import os

__all__ = ["AckPacer", "ACK_INTERVAL_S"]

ACK_INTERVAL_S = 0.25
if os.environ.get("LABD_ACK_INTERVAL_S"):  # tests and benchmarks compare intervals (0: ack every batch)
    ACK_INTERVAL_S = max(0.0, float(os.environ["LABD_ACK_INTERVAL_S"]))
PRUNE_AT = 4096  # acked-at entries kept before the stale ones are dropped


class AckPacer:
    """Decides per session whether an ack leaves now, and which owed acks are due."""

    def __init__(self, interval: float = ACK_INTERVAL_S) -> None:
        self.interval = interval
        self._acked_at: dict[str, float] = {}  # session -> when its last ack was sent (monotonic)
        self._owed: dict[str, float] = {}  # session -> when its owed ack is due
        self._prune_at = PRUNE_AT

    def now_or_later(self, sid: str, now: float, prompt: bool) -> bool:
        """True: send the session's ack now (it is recorded as sent). False: it is owed, and :meth:`owed`
        returns the session once the interval since its last ack has passed."""
        last = self._acked_at.get(sid)
        if prompt or last is None or now - last >= self.interval:
            self._sent(sid, now)
            return True
        self._owed.setdefault(sid, last + self.interval)
        return False

    def timeout_ms(self, now: float, longest: int) -> int:
        """How long the ingest loop may wait for input before an owed ack is due (at most ``longest``)."""
        if not self._owed:
            return longest
        return max(0, min(longest, int((min(self._owed.values()) - now) * 1000) + 1))

    def owed(self, now: float) -> list[str]:
        """The sessions whose owed ack is due now (recorded as sent: the caller sends them)."""
        if not self._owed:
            return []
        due = [sid for sid, at in self._owed.items() if at <= now]
        for sid in due:
            self._sent(sid, now)
        return due

    def forget(self, sid: str) -> None:
        """The session ended: nothing more to ack."""
        self._acked_at.pop(sid, None)
        self._owed.pop(sid, None)

    def _sent(self, sid: str, now: float) -> None:
        self._owed.pop(sid, None)
        acked = self._acked_at
        acked[sid] = now
        if len(acked) > self._prune_at:  # bounded however many sessions come and go without an end seen here
            stale = now - self.interval
            for key in [k for k, at in acked.items() if at <= stale and k not in self._owed]:
                del acked[key]
            self._prune_at = max(PRUNE_AT, 2 * len(acked))  # amortised: never a scan per ack
