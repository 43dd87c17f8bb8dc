"""How many processes and threads the machine started since the last look: a fork storm seen within a tick.

The process-count limit is checked at each pass over /proc, every 2 s while no session has a memory limit (every
session has a ``procs`` limit by default, and a pass every 0.1 s for all of them would cost the daemon a walk of
/proc ten times a second). A fork storm outruns that: an attack review forked 8,000 processes in 1.6 s, 30 times a
default limit of 256, before the next pass. The kernel's last assigned pid (the fifth field of ``/proc/loadavg``, one
small read) says how many pids were handed out since the last look, by any process of the machine; past
:data:`BURST` in one tick, the monitor passes at once (daemon/monitor.py), so a storm runs at most a tick (0.1 s)
past the limit. Threads take pids too, so a thread storm also brings a pass (threads are not counted by ``procs``).
The pids are counted over a window of :data:`WINDOW_S`, however often the monitor looks: it ticks every 20 ms while
a session is CPU-throttled, and counting from the last look only then took 3,200 forks a second to be a storm
(review helper-158).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["BURST", "ForkRate"]

#: pids handed out since the last look that make the monitor pass now
BURST = 64
#: the span the pids are counted over (the monitor's ``limit_interval``)
WINDOW_S = 0.1


def last_pid() -> int | None:
    """The pid the kernel handed out last (``/proc/loadavg``, field 5); None where unreadable."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[4])
    except (OSError, ValueError, IndexError):
        return None


class ForkRate:
    """:meth:`burst` is true when at least :data:`BURST` pids were handed out within a window of :data:`WINDOW_S`
    (or since the previous call, when calls are further apart)."""

    def __init__(self, read: Callable[[], int | None] = last_pid,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        try:
            with open("/proc/sys/kernel/pid_max", "rb") as f:
                self.pid_max = int(f.read())
        except (OSError, ValueError):
            self.pid_max = 1 << 22
        self._base: int | None = None  # the last pid when the window began
        self._base_at = 0.0

    def burst(self) -> bool:
        now, at = self._read(), self._clock()
        base = self._base
        if now is None or base is None:
            self._base, self._base_at = now, at
            return False
        storm = (now - base) % self.pid_max >= BURST  # pids wrap at pid_max
        if storm or at - self._base_at >= WINDOW_S:  # a new window: from this look on
            self._base, self._base_at = now, at
        return storm
