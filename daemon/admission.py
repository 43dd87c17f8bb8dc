"""What starts when: the supervisor's side of the run queue (a mixin of :class:`labd.daemon.supervisor.Supervisor`).

A session is submitted once its ``session.created`` is posted: it starts at once if nobody waits ahead of it and it
fits the queue's capacity (``[daemon] max_sessions``, ``memory_total``), else it waits in status ``queued``
(daemon/queue.py holds the order). :meth:`Admission.pump` starts waiting sessions, in order, as capacity frees; a
launch that finds the disk full keeps its session (and those behind it) queued and tries again later; a session
stopped while queued ends ``cancelled`` without a runner ever starting.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labd.daemon.limits import Limits
from labd.daemon.orphans import Claims
from labd.daemon.queue import Queued, RunQueue

if TYPE_CHECKING:
    from labd.daemon.supervisor import Running

__all__ = ["Admission", "DISK_FULL_RETRY_S"]

#: a launch that failed for want of disk space (the session directory, its key, the spool) is tried again after
#: this long, the session kept at the head of the queue: a full disk is a bad moment, not the session's fault
DISK_FULL_RETRY_S = 5.0
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


#: why a session whose launch found no room on disk waits (``session.queued`` ``why``)
DISK_FULL = "the disk is full (no room for its event spool)"


class Admission:
    """The run queue's side of the supervisor (main thread)."""

    # provided by Supervisor
    queue: RunQueue
    claims: Claims
    running: dict[str, Running]
    post: Callable[..., None]
    log: Any
    spec_for: Callable[[Queued], dict[str, Any]] | None
    launcher: Any
    _held_until: float

    def launch(self, sid: str, spec: dict[str, Any], limits: Limits) -> Running:
        """Start a runner now (:meth:`labd.daemon.supervisor.Supervisor.launch`)."""
        raise NotImplementedError

    def submit(self, q: Queued) -> int | None:
        """Start ``q`` now if there is capacity and nobody waits ahead of it; else queue it.
        Returns its queue position, or None if it was launched. One whose launch found the disk full is queued (at
        the head: the queue was empty), and :meth:`pump` launches it once there is room; it was dropped, left
        ``created`` for good."""
        # behind a launch that found the disk full, a session waits for room on disk too (it was told "room in the run
        # queue (max_sessions, memory_total)" in a home that sets neither: an admin's review)
        fits = self.queue.fits(q.limits, self._running_limits())
        disk_full = fits and time.monotonic() < self._held_until  # one that does not fit waits for room all the same
        if not len(self.queue) and fits:
            if self._start(q):
                return None  # launched
            disk_full = True  # queued below, saying why: "max_sessions, memory_total" sent the user looking there
        self.queue.push(q)
        pos = self.queue.position(q.sid) or 0
        queued: dict[str, Any] = {"position": pos, "priority": q.priority}
        if disk_full:
            queued["why"] = DISK_FULL
        self.post(q.sid, "session.queued", queued)
        self.log.info("session queued", session_id=q.sid, position=pos, priority=q.priority)
        return pos

    def requeue(self, q: Queued) -> None:
        """Put back a session that was queued when the previous daemon stopped (no new event). One that could
        never start under this daemon's configuration (its ``memory_total`` is smaller than the last one's) is
        ended ``failed`` instead: waiting at the head of the queue, it blocked every session behind it for good."""
        why = self.queue.unfit_reason(q.limits)
        if why is not None:
            self._end_queued(q.sid, "failed", f"{why} (the configuration changed): it could never start")
            return
        self.queue.push(q)

    def dequeue(self, sid: str, by: str, reply_to: tuple[bytes, str] | None = None) -> bool:
        """End a queued session before any runner started: ``cancelled``. False if it is not queued. ``reply_to``:
        a request answered once the end is committed (the daemon's ``defer``)."""
        if not self.queue.remove(sid):
            return False
        self._end_queued(sid, "cancelled", f"stopped while queued (by {by})", reply_to)
        return True

    def _end_queued(self, sid: str, status: str, reason: str, reply_to: tuple[bytes, str] | None = None) -> None:
        """The one way a session that waited in the queue (no runner ever started for it this time) ends."""
        self.post(sid, "session.ended", {"status": status, "reason": reason, "ended_by": "queue"}, reply_to=reply_to)
        self.log.info("queued session ended", session_id=sid, status=status, reason=reason)

    def pump(self) -> None:
        """Start queued sessions, in order, while capacity allows. An entry that could never start (see
        RunQueue.admit; normally refused before it is queued) is ended ``failed`` rather than block the queue."""
        if len(self.queue) and time.monotonic() >= self._held_until:
            unfit: list[Queued] = []
            admitted = self.queue.admit(self._running_limits(), unfit)
            for q in unfit:
                why = self.queue.unfit_reason(q.limits) or "it does not fit the run queue's capacity"
                self._end_queued(q.sid, "failed", f"{why}: it could never start")
            for i, q in enumerate(admitted):
                if not self._start(q):  # the disk is full: it and those admitted after it wait, in order
                    for later in admitted[i:]:
                        self.queue.push(later)
                    break

    def _running_limits(self) -> list[Limits]:
        return [r.limits for r in self.running.values()] + self.claims.limits()

    def _start(self, q: Queued) -> bool:
        """Launch a queued session; False (nothing posted) if the disk is full: the caller queues it again."""
        assert self.spec_for is not None  # noqa: S101 - set by the daemon before any request is served
        try:
            self.launch(q.sid, self.spec_for(q), q.limits)
        except Exception as exc:  # noqa: BLE001 - reported as the session's end (and so to the client)
            if _disk_full(exc):
                if time.monotonic() >= self._held_until + DISK_FULL_RETRY_S:  # once per spell, not every retry
                    self.log.warning("the disk is full: queued sessions wait until a launch succeeds",
                                     session_id=q.sid, error=str(exc), retry_s=DISK_FULL_RETRY_S)
                self._held_until = time.monotonic() + DISK_FULL_RETRY_S
                # what the launcher keeps ready (a spare runner, a checker) holds files open: a file the admin
                # deletes to make room kept its space until they were renewed, up to 5 minutes (docs/security.md)
                renew = getattr(self.launcher, "renew_spares", None)
                if renew is not None:
                    renew()
                return False
            self.post(q.sid, "session.ended", {"status": "failed", "reason": f"launch failed: {exc}",
                                               "ended_by": "launch"})
        return True


def _disk_full(exc: BaseException) -> bool:
    """Did a launch fail for want of disk space (``ENOSPC``, ``EDQUOT``), itself or as the cause it reports?"""
    seen: BaseException | None = exc
    for _ in range(5):  # a launcher may wrap the OSError (its cause or context)
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
