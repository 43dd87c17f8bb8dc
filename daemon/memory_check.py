"""Memory limits of watched sessions, for the limits monitor (:mod:`labd.daemon.monitor`).

A session's memory is its tree's summed PSS (proportional set size: a page shared by k processes counts 1/k in each,
so pages shared within a tree count once and pages shared with the template only by their share), plus what it holds
in memfd and tmpfs files it has open but has not mapped (:mod:`labd.daemon.shmem`). A pass estimates it from cached
figures; an estimate over the limit is confirmed by an exact read before the tree is killed. A session past
:data:`NEAR_FRACTION` of its limit is *near*: the monitor re-reads its known members between passes
(:meth:`MemoryCheck.quick`) every ``NEAR_TICK_S``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labd.daemon.proctable import Proc, PssCache, read_proc
from labd.daemon.shmem import ShmemCache
from labd.daemon.watched import Watched

__all__ = ["MemoryCheck", "NEAR_FRACTION"]

NEAR_FRACTION = 0.5


class MemoryCheck:
    """Measures sessions' memory and reports a breach once (``breached(w, payload)``: the monitor sends the note and
    kills the tree)."""

    def __init__(self, pss: PssCache, shmem: ShmemCache, breached: Callable[[Watched, dict[str, Any]], None]) -> None:
        self.pss = pss
        self.shmem = shmem
        self._breached = breached

    def estimate(self, members: list[Proc], exact: bool) -> int:
        """The members' memory: exact PSS reads, or the cached estimate."""
        read = self.pss.exact if exact else self.pss.estimate
        return sum(read(p) for p in members) + self.shmem.held(members, exact=exact)

    def quick_all(self, watched: list[Watched]) -> None:
        """Between passes: re-read every session close to its limit."""
        near = [w for w in watched if w.near and not w.breached]
        if near:
            self.shmem.begin()
        for w in near:
            self.quick(w)

    def quick(self, w: Watched) -> None:
        """Re-read the known members of a session close to its memory limit."""
        members = [p for p in (read_proc(m.pid) for m in w.members) if p is not None]
        if members:
            w.members = members
            self.check(w, self.estimate(members, exact=False))

    def check(self, w: Watched, estimate: int) -> int:
        """Report a breach if the tree's memory is over the limit (confirmed by an exact PSS read); returns the
        figure."""
        lim = w.limits.memory
        memory = estimate
        if lim is not None and estimate > lim and not w.breached:
            memory = self.estimate(w.members, exact=True)
        w.memory = memory
        w.peak_memory = max(w.peak_memory, memory)
        if lim is not None:
            w.near = memory > lim * NEAR_FRACTION
            if memory > lim and not w.breached:
                w.breached = True
                self._breached(w, {"limit": "memory", "measured": memory, "max": lim, "unit": "bytes",
                                   "action": "kill"})
        return memory
