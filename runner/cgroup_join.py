"""The runner's first act: join the cgroup the daemon made for its session (daemon/cgroups.py).

Done before anything of the workflow runs and before the runner confines itself (its Landlock policy makes the cgroup
file systems read-only): every process and thread the session starts from then on is born inside the group, so the
kernel counts its memory and tasks against the session's limits and keeps it a member whatever it does to its
parentage.
"""

from __future__ import annotations

import os

__all__ = ["join_cgroup"]

_joined: list[str] | None = None  # the groups this process is in (joined by a spare while it waited)


def join_cgroup(procs_files: list[str] | None) -> str:
    """Move this process into each ``cgroup.procs`` file's group; what happened, for ``session.started``:
    ``"joined"``, ``"none"`` (the daemon made no group) or ``"failed: <why>"`` (the /proc monitor still enforces
    the session's limits)."""
    global _joined
    if not procs_files:
        return "none"
    if procs_files == _joined:  # a spare runner joined it while it waited (runner/spare.py)
        return "joined"
    me = str(os.getpid()).encode()
    for path in procs_files:
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, me)
            finally:
                os.close(fd)
        except OSError as exc:
            return f"failed: {exc.strerror or exc} ({path})"
    _joined = list(procs_files)
    return "joined"
