"""The launcher seam: how the supervisor starts, signals, polls and kills runner processes.

:class:`Launcher` is the whole interface the supervisor uses; a later launcher (a Ray actor per
session, a container) implements the same methods without touching the rest of the daemon. The
launcher never calls back into the supervisor: exits are *reported* by :meth:`Launcher.drain_exits`,
which the supervisor polls. Each launcher is a module of its own: the local one, which forks runners from a warm
template process, is :mod:`labd.daemon.template_launcher`; the Ray one :mod:`labd.daemon.ray_launcher`. What they
share (how a runner ended, signalling its process group, reading a helper's pipe, room on disk) is here.
"""

from __future__ import annotations

import os
import select
import subprocess
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Launcher", "ExitInfo", "LaunchError", "close_pipes", "readable", "signal_group", "room"]

class LaunchError(Exception):
    """The runner could not be started."""


@dataclass(frozen=True)
class ExitInfo:
    """How a runner process ended (``exit_code`` is None when it was killed by ``signal``)."""

    pid: int
    exit_code: int | None
    signal: int | None
    #: set when the runner was lost rather than ended (a remote launcher: its actor or node died, and why)
    reason: str | None = None
    #: a remote runner's crash file's end, read on its node (``(text, cut)``: runner/crash_tail.py); a local
    #: runner's file is read by the supervisor itself
    crash: tuple[str, bool] | None = None
    #: CPU seconds (user + system) of the runner and the processes it reaped, when its parent reaped it (the local
    #: template: ``wait4``); None when it is not known (an adopted runner's end is noticed, not reaped, by the daemon)
    cpu: float | None = None
    #: the launch failed after launch() returned (a remote launcher answers later): the session ends ``failed``
    #: with this reason, as when launch() raises
    failed: str | None = None
    #: an adoption found no runner of the session at all (no Ray actor of it): a session that never ran is started
    #: instead of recorded lost (daemon/recovery.py)
    absent: bool = False


def signal_group(pid: int, sig: int) -> bool:
    """Send ``sig`` to the runner's process group; False if it no longer exists ("no such process")."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # the pgid was reused by someone else's process: not ours to signal
        return False


class Launcher(Protocol):
    """What the supervisor needs from a way of running runners."""

    def start(self) -> None:
        """Called once by the daemon at start-up, before any launch."""

    def fileno(self) -> int | None:
        """A file descriptor the daemon's main loop polls; when readable, call :meth:`drain_exits`."""

    def launch(self, spec: dict[str, Any]) -> tuple[int, float]:
        """Start a runner for ``spec``; return ``(pid, process create time)``. Called by the supervisor."""

    def drain_exits(self) -> list[ExitInfo]:
        """Exits observed since the last call (only for runners this launcher started)."""

    def signal(self, pid: int, sig: int) -> bool:
        """Signal the runner's whole process group; False if it is gone."""

    def shutdown(self) -> None:
        """Release launcher resources; runners keep running. Called once at daemon exit."""


def close_pipes(proc: subprocess.Popen[bytes]) -> None:
    """Close a reaped helper process's stdin and stdout pipes (a broken one is already as good as closed)."""
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass


def readable(fd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``fd`` to be readable. poll(), not select(): select() refuses an fd of 1024 or
    more, which a restarted template's pipe gets in a daemon holding many connections (its limit is raised)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def room(path: str | os.PathLike[str]) -> int:
    """Bytes this process may still write on ``path``'s filesystem (root may use the blocks reserved for it)."""
    free = os.statvfs(path)
    return (free.f_bfree if os.geteuid() == 0 else free.f_bavail) * free.f_frsize
