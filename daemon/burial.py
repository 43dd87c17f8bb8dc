"""Burials: what an ended session left behind is terminated (the limits monitor's second concern).

When a session's run ends, :meth:`Burials.bury` takes over what the monitor knew of its tree (every process key seen
in it, its runner's process group, its cgroup): whatever of it is still alive is sent SIGTERM, then SIGKILL after
:data:`BURY_GRACE_S` (at once after a memory breach), and hunted for :data:`BURY_HUNT_S` more (double-forked escapees
that surface later). The monitor's pass finds the members (:meth:`labd.daemon.monitor.Monitor._pass`: by key, by
process group, by the inherited ``LABD_SESSION_ID`` marker) and calls :meth:`Burials.hunt` with them. Once nothing is
left, the run's cgroup is released: what is still in it goes too, whatever its parentage (:mod:`labd.daemon.cgroups`).

A session resumed before its last run's burial is over (``labd kill S; labd resume S``): :meth:`Burials.resumed`
ends that burial when the new runner is watched, SIGKILLing what the last run left (it would otherwise live on in
the resumed session's name) and releasing the last run's group, never the resumed runner's.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field

from labd.daemon.cgroups import SessionCgroups
from labd.daemon.proctable import Proc, read_proc
from labd.daemon.watched import Watched, kill_proc

__all__ = ["Buried", "Burials", "BURY_GRACE_S", "BURY_HUNT_S"]

BURY_GRACE_S = 2.0  # SIGTERM -> SIGKILL for what a finished session left behind
BURY_HUNT_S = 10.0  # how long escaped processes of an ended session are looked for


@dataclass
class Buried:
    """An ended session whose left-over processes are being terminated."""

    sid: str
    pid: int
    keys: set[tuple[int, int]]
    kill_at: float
    until: float
    termed: set[tuple[int, int]] = field(default_factory=set)
    empty: int = 0  # consecutive passes that found nothing left
    group: str | None = None  # the run's cgroup (daemon/cgroups.py), released when the burial ends


class Burials:
    """The ended runs being buried, by session (thread-safe: the supervisor buries, the monitor's thread hunts)."""

    def __init__(self, cgroups: SessionCgroups | None) -> None:
        self.cgroups = cgroups
        self._lock = threading.Lock()
        self._by_sid: dict[str, Buried] = {}

    def bury(self, w: Watched) -> None:
        """``w``'s run is over: terminate what is left of its tree (SIGKILL at once if it breached a limit)."""
        now = time.monotonic()
        b = Buried(w.sid, w.pid, set(w.keys), now + (0.0 if w.breached else BURY_GRACE_S),
                   now + BURY_GRACE_S + BURY_HUNT_S,
                   group=self.cgroups.group_of(w.sid) if self.cgroups is not None else None)
        with self._lock:
            self._by_sid[w.sid] = b

    def resumed(self, sid: str, pid: int) -> None:
        """``sid`` runs again (runner ``pid``): end its last run's burial now, if one is still going on."""
        with self._lock:
            last = self._by_sid.pop(sid, None)
        if last is None:
            return
        for key_pid, start in last.keys:
            seen = read_proc(key_pid)
            if key_pid != pid and seen is not None and seen.start == start:  # never a reused pid
                kill_proc(seen, signal.SIGCONT)  # a throttled (stopped) process must get its SIGKILL too
                kill_proc(seen, signal.SIGKILL)
        if self.cgroups is not None and last.group is not None:  # None: that run had no group (never the current)
            self.cgroups.release(sid, last.group)

    def pending(self) -> list[Buried]:
        """The burials going on."""
        with self._lock:
            return list(self._by_sid.values())

    def __bool__(self) -> bool:
        return bool(self._by_sid)

    def hunt(self, b: Buried, members: list[Proc], now: float) -> None:
        """Terminate what is left of an ended run: SIGTERM once, SIGKILL from ``kill_at``; release its group once
        nothing is left."""
        b.keys.update(p.key for p in members)
        for p in members:
            if p.zombie:
                continue
            if now >= b.kill_at:
                kill_proc(p, signal.SIGCONT)
                kill_proc(p, signal.SIGKILL)
            elif p.key not in b.termed:
                b.termed.add(p.key)
                kill_proc(p, signal.SIGCONT)
                kill_proc(p, signal.SIGTERM)
        b.empty = 0 if members else b.empty + 1
        # nothing left in two passes in a row (in-flight forks have landed by then): done; keeps the fast
        # pass period from lasting BURY_HUNT_S after every ordinary session end
        if now >= b.until or b.empty >= 2 or (not members and now >= b.kill_at):
            with self._lock:
                done = self._by_sid.get(b.sid) is b
                if done:
                    del self._by_sid[b.sid]
            if done and self.cgroups is not None and b.group is not None:  # a run without a group: none to release
                self.cgroups.release(b.sid, b.group)  # what is left in its group (it left every other trace) goes too
