"""Keep a runner's descendants in its process tree: the runner becomes a child subreaper.

Without it, a child that double-forks (or a daemonising tool) leaves an orphan that the kernel re-parents
to init, outside the runner's tree: the monitor would no longer count it against the session's limits and
a stop would not reach it. With ``PR_SET_CHILD_SUBREAPER`` the orphan is re-parented to the runner
instead, so it stays in the tree the monitor walks. (``setsid`` alone never changes a parent, only the
process group; the monitor signals such members one by one.)

Orphans adopted this way that exit stay zombies until the runner exits (it does not ``wait()`` for
children it did not start: reaping them could steal the exit status a workflow's own ``subprocess`` or
``multiprocessing`` is waiting for); init reaps them then.
"""

from __future__ import annotations

import ctypes

__all__ = ["become_subreaper"]

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants (Linux >= 3.4); False if not possible."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # our own symbols include libc's (no find_library: it forks)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux, or no prctl: the monitor's marker search still applies
        return False
