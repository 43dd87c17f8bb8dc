"""How many processes and threads the machine started since the last look: a fork storm seen within a tick.

The process-count limit is checked at each pass over /proc, every 2 s while no session has a memory limit (every
session has a ``procs`` limit by default, and a pass every 0.1 s for all of them would cost the daemon a walk of
/proc ten times a second). A fork storm outruns that: an attack review forked 8,000 processes in 1.6 s, 30 times a
default limit of 256, before the next pass. The kernel's last assigned pid (the fifth field of ``/proc/loadavg``, one
small read) says how many pids were handed out since the last look, by any process of the machine; past
:data:`BURST` in one tick, the monitor passes at once (daemon/monitor.py), so a storm runs at most a tick (0.1 s)
past the limit. Threads take pids too, so a thread storm also brings a pass (threads are not counted by ``procs``).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BURST", "ForkRate"]

#: pids handed out since the last look that make the monitor pass now
BURST = 64


def last_pid() -> int | None:
    """The pid the kernel handed out last (``/proc/loadavg``, field 5); None where unreadable."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[4])
    except (OSError, ValueError, IndexError):
        return None


class ForkRate:
    """:meth:`burst` is true when at least :data:`BURST` pids were handed out since the previous call."""

    def __init__(self, read: Callable[[], int | None] = last_pid) -> None:
        self._read = read
        try:
            with open("/proc/sys/kernel/pid_max", "rb") as f:
                self.pid_max = int(f.read())
        except (OSError, ValueError):
            self.pid_max = 1 << 22
        self._last: int | None = None

    def burst(self) -> bool:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None:
            return False
        return (now - last) % self.pid_max >= BURST  # pids wrap at pid_max
