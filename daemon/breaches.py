"""A session past a limit, as the limits monitor handles it: the note to the supervisor first (so the breach is
recorded before the exit it causes), then the kill of the session's whole tree; a breach the kernel itself held (a
session's cgroup memory limit) is reported the same way. A mixin of :class:`labd.daemon.monitor.Monitor`."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from labd.daemon.cgroups import SessionCgroups
from labd.daemon.watched import Watched, sample_payload, signal_members

__all__ = ["Breaches"]


class Breaches:
    """The monitor's limit notes and kills (its lock, watched sessions and sockets are the monitor's)."""

    _lock: threading.Lock
    _watched: dict[str, Watched]
    _kills: dict[str, tuple[int, dict[str, Any]]]
    cgroups: SessionCgroups | None
    log: Any
    notes: Any

    def kernel_breach(self, sid: str, limit: int, report: Callable[[dict[str, Any]], None],
                      only: Watched | None = None) -> bool:
        """If the kernel killed a process of ``sid`` at its cgroup's memory limit: the session's memory breach,
        reported (``report`` gets the ``limit.exceeded`` payload, before the kill) and its tree killed as a breach
        seen here would be. False if not, or already reported. Called by the pass, and by the supervisor when a
        runner exits (the kernel may have killed the runner itself before a pass saw it). ``only``: the pass's
        entry; a pass that began before the session was resumed must not read (and take) the resumed run's
        breach, nor kill it under the ended run's name (its note would be dropped as stale: an unexplained kill)."""
        if only is not None:
            with self._lock:
                if self._watched.get(sid) is not only:
                    return False
        note = self.cgroups.breach(sid, limit) if self.cgroups is not None else None
        with self._lock:
            w = self._watched.get(sid)
            if note is None or w is None or w.breached or (only is not None and w is not only):
                return False
            w.breached = True
        report(note)
        self.log.warning("memory limit held by the kernel (cgroup): killing", session_id=sid, **note)
        self._kill_tree(w)
        return True

    def _memory_breached(self, w: Watched, note: dict[str, Any]) -> None:
        # The note goes out before the kill, so the supervisor records the breach before the exit; it carries the
        # sample with the peak that broke the limit (whichever path, pass or quick re-read, saw it): sent to ingest
        # from here, on another socket, it could land after session.ended, and a client reading the ended session
        # would see a peak below the limit that killed it.
        self._limit_note(w, note, sample_payload(w))
        self.log.warning("memory limit exceeded: killing", session_id=w.sid, memory=note["measured"],
                         limit=note["max"])
        self._kill_tree(w)

    def _limit_note(self, w: Watched, note: dict[str, Any], sample: dict[str, Any] | None) -> None:
        """Tell the supervisor a limit was broken (before any kill, so that it records the breach before the exit).
        A kill's note is also kept until the supervisor takes it at the runner's exit (:meth:`take_kill`): the exit
        can reach it before the note is read from its socket, and under load a memory breach ended "runner killed by
        SIGKILL", the breach's note dropped after the end (seen in the full suite)."""
        if note.get("action") == "kill":
            with self._lock:
                self._kills[w.sid] = (w.pid, note)
        self.notes.send_pyobj(("limit", w.sid, note, sample, w.pid))

    def take_kill(self, sid: str, pid: int) -> dict[str, Any] | None:
        """The note of a kill for a limit of ``sid``'s runner ``pid`` (:meth:`_limit_note`), once; None if none."""
        with self._lock:
            kept = self._kills.pop(sid, None)
        return kept[1] if kept is not None and kept[0] == pid else None

    def _kill_tree(self, w: Watched) -> None:
        signal_members(w, signal.SIGCONT)
        signal_members(w, signal.SIGKILL)
