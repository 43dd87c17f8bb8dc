"""The daemon's watch on its runtime directory (sockets and connection file, docs/protocol.md §1), which others may
clean away under a daemon that runs for weeks.

``systemd-tmpfiles`` deletes what in ``/tmp`` has not changed for 10 days (the runtime directory is there when there
is no ``XDG_RUNTIME_DIR``: cron, containers, ``su``), and ``/run/user/UID`` is removed when a user's last login ends
without lingering. The entries are touched every hour, which the age-based cleaning spares; once the connection file
is gone all the same, no client can reach the daemon, and :meth:`RuntimeWatch.gone` says so (the daemon then exits,
and the next one, e.g. restarted by systemd, adopts its sessions).
"""

from __future__ import annotations

import contextlib
import os
import time

from labd.ipc.paths import Layout
from labd.ipc.units import shortened

__all__ = ["RuntimeWatch"]

#: how often the connection file is looked for
CHECK_S = 2.0
#: how often the runtime directory's entries are touched (``LABD_RUNTIME_TOUCH_S`` shortens it, for tests)
TOUCH_S = shortened(3600.0, "LABD_RUNTIME_TOUCH_S", floor=CHECK_S)


class RuntimeWatch:
    """Called from the main loop; does its work at most every :data:`CHECK_S`."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._checked = 0.0
        self._touched = time.monotonic()

    def gone(self) -> bool:
        """Is the connection file gone (the runtime directory removed under the daemon)?"""
        now = time.monotonic()
        if now < self._checked + CHECK_S:
            return False
        self._checked = now
        if now >= self._touched + TOUCH_S:
            self._touched = now
            self.touch()
        return not os.path.lexists(self.layout.connection_file)

    def touch(self) -> None:
        """The runtime directory and its entries (sockets, connection file) made recent, as age-based cleaners see."""
        try:
            paths = [self.layout.runtime_dir, *self.layout.runtime_dir.iterdir()]
        except OSError:  # removed: gone() says so
            return
        for path in paths:
            with contextlib.suppress(OSError):
                os.utime(path, follow_symlinks=False)
