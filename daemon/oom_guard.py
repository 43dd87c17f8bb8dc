"""The daemon keeps the OOM score it started with: a session's code may raise it.

Any process of the daemon's user may raise ``/proc/<pid>/oom_score_adj`` of another of its processes (lowering it
needs ``CAP_SYS_RESOURCE``, except back down to the process's ``oom_score_adj_min``, which only a privileged writer
moves: 0 unless the service manager set one). A session's workflow code runs as that user, and the runner's Landlock
policy cannot cover /proc entry by entry: an attack review wrote 1000 into the daemon's, so that where no cgroup holds
the session's memory, the kernel's OOM killer would take the daemon, not the session that exhausted memory. The limits
monitor reads the daemon's value after every pass (one small read) and writes the start value back when it finds it
raised: within a pass period (0.1-0.25 s), far less than filling a machine's memory takes.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["OomGuard"]

PATH = "/proc/self/oom_score_adj"


class OomGuard:
    """Puts the daemon's ``oom_score_adj`` back to its start value (see the module docstring)."""

    def __init__(self, log: Any, path: str = PATH) -> None:
        self.log = log
        self.path = path
        self.start = self._read()
        self.restored = 0  # times a raised value was written back (``labd status``: monitor.oom_score_restored)
        self._failed = False

    def _read(self) -> int | None:
        try:
            with open(self.path, "rb") as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def check(self) -> None:
        """Write the start value back if the current one is higher; say so (once per change, not per pass)."""
        if self.start is None:
            return
        now = self._read()
        if now is None or now <= self.start:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.write(fd, str(self.start).encode())
            finally:
                os.close(fd)
        except OSError as exc:
            if not self._failed:  # raised again and again by the same session: one line, not one per pass
                self._failed = True
                self.log.error("the daemon's OOM score was raised and cannot be put back: the kernel would take the "
                               "daemon first when memory runs out", oom_score_adj=now, start=self.start,
                               error=str(exc))
            return
        self._failed = False
        self.restored += 1
        self.log.warning("the daemon's OOM score was raised (by a session's code, or another process of this user) "
                         "and is put back", oom_score_adj=now, start=self.start)
