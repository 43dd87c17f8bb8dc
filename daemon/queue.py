"""The run queue: sessions beyond the daemon's capacity wait, in order, and start as soon as capacity frees.

Capacity is ``[daemon] max_sessions`` (runners at once; 0 = no limit) and, when ``memory_total`` is set,
the sum of the running sessions' memory limits (a session's ``--memory`` is its reservation). Order is
``priority`` (higher first), then submission order. The queue is strictly first in, first out within that
order: a small session never overtakes a bigger one waiting at the head (no starvation of big sessions).

The queue is kept in memory and is rebuilt from the store when a daemon starts (:func:`requeue`): every
session whose stored status is ``queued`` goes back in, in its original order (``session.queued`` records
the priority; submission order is ``created_at``). A queued session has no process; stopping it ends it
``cancelled`` without a runner ever starting.

A session that could never fit (its memory reservation is more than ``memory_total``: :meth:`RunQueue.never_fits`)
must not wait at the head for ever, blocking every session behind it. New sessions, resumes and branches are
refused ``bad_limits`` for it; one that is in the queue all the same (queued under a larger ``memory_total`` before
the daemon restarted with a smaller one) is ended ``failed`` when it is re-queued, and :meth:`RunQueue.admit` takes
such an entry off the head (for the supervisor to end) rather than stop at it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from labd.daemon.limits import Limits
from labd.ipc.units import format_size

__all__ = ["Queued", "RunQueue"]


@dataclass(order=True)
class Queued:
    """A session waiting for capacity, with what is needed to launch it later."""

    order: tuple[int, float, int]  # (-priority, submitted at, tie-breaker)
    sid: str = field(compare=False)
    workflow: str = field(compare=False)
    params: dict[str, Any] = field(compare=False)
    limits: Limits = field(compare=False)
    workdir: str = field(compare=False)
    priority: int = field(compare=False, default=0)
    #: the rest of the runner's start spec that belongs to this session (name, sys_path, agent_overrides)
    extra: dict[str, Any] = field(compare=False, default_factory=dict)


class RunQueue:
    """Capacity bookkeeping and the ordered queue of sessions waiting for it."""

    def __init__(self, max_sessions: int = 0, memory_total: int | None = None) -> None:
        self.max_sessions = max_sessions
        self.memory_total = memory_total
        self._heap: list[Queued] = []
        #: sid -> its entry, for the sessions still queued; a heap entry that is not here (removed, stopped)
        #: is skipped lazily when it reaches the head
        self._live: dict[str, Queued] = {}
        self._tie = itertools.count()

    def reservation(self, limits: Limits) -> int:
        """What a session counts against ``memory_total`` (its memory limit; 0 when no total is set)."""
        return (limits.memory or 0) if self.memory_total is not None else 0

    def never_fits(self, limits: Limits) -> bool:
        """True if the session could not start even on an idle daemon. Only memory can make it so: ``max_sessions``
        (at least 1 when set) always lets a session start alone, and CPU and process limits reserve nothing."""
        return self.memory_total is not None and self.reservation(limits) > self.memory_total

    def unfit_reason(self, limits: Limits) -> str | None:
        """Why a session with ``limits`` could never start here (a sentence fragment), or None if it could."""
        if not self.never_fits(limits):
            return None
        return (f"its memory reservation {format_size(self.reservation(limits))} exceeds memory_total "
                f"{format_size(self.memory_total)}")

    def fits(self, limits: Limits, running: Iterable[Limits]) -> bool:
        """Whether a session with ``limits`` can start next to the ``running`` ones."""
        running = list(running)
        if self.max_sessions and len(running) >= self.max_sessions:
            return False
        if self.memory_total is not None:
            reserved = sum(self.reservation(lim) for lim in running)
            return reserved + self.reservation(limits) <= self.memory_total
        return True

    def entry(self, sid: str, workflow: str, params: dict[str, Any], limits: Limits, workdir: str,
              priority: int = 0, submitted: float = 0.0, extra: dict[str, Any] | None = None) -> Queued:
        return Queued((-priority, submitted, next(self._tie)), sid, workflow, params, limits, workdir, priority,
                      extra or {})

    def push(self, q: Queued) -> None:
        """Queue ``q`` (O(log n): a daemon re-queuing thousands of sessions at start does not sort for each;
        :meth:`position` tells where it stands)."""
        heapq.heappush(self._heap, q)
        self._live[q.sid] = q

    def __contains__(self, sid: object) -> bool:
        return sid in self._live

    def __len__(self) -> int:
        return len(self._live)

    def remove(self, sid: str) -> bool:
        """Take a session out of the queue (it was stopped); False if it is not queued."""
        return self._live.pop(sid, None) is not None

    def _clean_head(self) -> None:
        while self._heap and self._live.get(self._heap[0].sid) is not self._heap[0]:
            heapq.heappop(self._heap)

    def admit(self, running: Iterable[Limits], unfit: list[Queued] | None = None) -> list[Queued]:
        """Pop, in order, the sessions that fit now (stops at the first one that does not). An entry that could
        never fit (:meth:`never_fits`) does not stop it: it is taken out of the queue and appended to ``unfit``
        (the caller ends it; without ``unfit`` it is only dropped), so it cannot block the sessions behind it."""
        running = list(running)
        out: list[Queued] = []
        self._clean_head()
        while self._heap:
            head = self._heap[0]
            if self.never_fits(head.limits):
                heapq.heappop(self._heap)
                self._live.pop(head.sid, None)
                if unfit is not None:
                    unfit.append(head)
            elif self.fits(head.limits, running):
                heapq.heappop(self._heap)
                self._live.pop(head.sid, None)
                out.append(head)
                running.append(head.limits)
            else:
                break
            self._clean_head()
        return out

    def position(self, sid: str) -> int | None:
        """1-based place in the queue, or None if not queued."""
        entry = self._live.get(sid)
        if entry is None:
            return None
        return 1 + sum(1 for q in self._live.values() if q.order < entry.order)

    def priority_of(self, sid: str) -> int | None:
        """The priority a queued session was submitted with, or None if not queued."""
        entry = self._live.get(sid)
        return None if entry is None else entry.priority

    def positions(self) -> dict[str, int]:
        live = sorted(self._live.values())
        return {q.sid: i for i, q in enumerate(live, 1)}
