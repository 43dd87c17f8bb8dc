"""What the monitor and ingest report of a session, and what the supervisor does about it (a mixin of
:class:`labd.daemon.supervisor.Supervisor`, on the daemon's main thread).

The monitor reports a limit crossed (memory, CPU, wall time, processes: a stop, or a kill already made), and a runner
process that vanished; ingest reports a budget crossed by the cost events, a session's own record past ``[daemon]
max_session_record``, an approval with a timeout, and a session the store refused to record. Each limit is posted as
``limit.exceeded`` before the stop (or pause) it leads to, so that the session's end says which limit ended it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labd.daemon.queue import RunQueue
from labd.ipc.units import format_size

if TYPE_CHECKING:
    from labd.daemon.supervisor import Running

__all__ = ["Notes"]


class Notes:
    """Monitor and ingest notes -> events, stops, pauses and kills (mixin of the supervisor)."""

    # provided by Supervisor
    running: dict[str, Running]
    queue: RunQueue
    post: Callable[..., None]
    log: Any

    def stop(self, sid: str, by: str, grace: float, reason: str = "stop requested") -> bool:
        raise NotImplementedError

    def pause(self, sid: str, by: str, reason: str) -> bool:
        raise NotImplementedError

    def watch_approval(self, sid: str, approval_id: str, deadline: float, policy: str) -> None:
        raise NotImplementedError

    def _rung(self, run: Running, step: str) -> None:
        raise NotImplementedError

    def on_note(self, note: tuple[Any, ...]) -> None:
        """Notes from the monitor (limit kill, timeout, vanished process) and ingest (budget, approvals)."""
        kind, sid = note[0], note[1]
        if kind == "unrecorded":
            self._unrecorded(sid)
            return
        if kind == "approval":
            _, _, aid, timeout, policy = note
            if timeout:
                self.watch_approval(sid, aid, time.time() + float(timeout), policy)
            return
        # The monitor's sample of that moment, when it sent one (the fourth part of its limit and vanished notes): a
        # memory breach's peak, a vanished session's last figures. Posted from here so it is ordered before the
        # session.ended it leads to (after it, it would still count: peaks are maxima). A remote launcher's limit
        # notes have three parts.
        sample = note[3] if kind in ("limit", "vanished") and len(note) > 3 else None
        if sample:
            self.post(sid, "resource.sample", sample)
        run = self.running.get(sid)
        if run is None:
            return
        if kind in ("limit", "vanished") and len(note) > 4 and note[4] != run.pid:
            return  # the monitor's note about an earlier run's runner (the session was resumed since): stale
        if kind == "budget":
            _, _, cost, budget = note
            action = run.limits.budget_action
            self.post(sid, "limit.exceeded", {"limit": "budget", "measured": cost, "max": budget, "unit": "USD",
                                              "action": action})
            if action == "pause":
                self.pause(sid, "limit", f"budget ${budget:g} exceeded")
            else:
                self.stop(sid, "limit", grace=5.0, reason=f"budget ${budget:g} exceeded")
            return
        if kind == "record":  # ingest: past [daemon] max_session_record (daemon/recordcap.py)
            _, _, used, limit = note
            self.post(sid, "limit.exceeded", {"limit": "recorded events", "measured": used, "max": limit,
                                              "unit": "bytes", "action": "stop"})
            self.stop(sid, "limit", grace=5.0, reason=f"recorded more than {format_size(limit)} of labd's own events "
                      "([daemon] max_session_record)")
            return
        if kind == "limit":  # posted from here, so it is ordered before the session.ended it leads to
            payload = note[2]
            self.post(sid, "limit.exceeded", payload)
            if payload["action"] == "kill":
                run.step = "sigkill"
            else:
                self.stop(sid, "limit", grace=min(5.0, run.grace or 5.0), reason=f"{payload['limit']} limit exceeded")
        elif kind == "vanished" and not run.vanished_at:
            run.vanished_at = time.monotonic()

    def _unrecorded(self, sid: str) -> None:
        """The store refused ``sid``'s ``session.created`` (its start was answered with the error): a session must
        not run, nor wait in the queue, without a record, so it goes at once. No event: there is no session."""
        if self.queue.remove(sid):
            self.log.warning("dropped a queued session the store refused to record", session_id=sid)
            return
        run = self.running.get(sid)
        if run is not None:
            run.unrecorded = True
            self._rung(run, "sigkill")
            self.log.warning("killed the runner of a session the store refused to record", session_id=sid)
