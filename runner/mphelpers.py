"""``multiprocessing``'s helper processes, which outlive the workflow: is anything else still running?

A workflow that used a ``spawn`` or ``forkserver`` pool (or a semaphore, a shared-memory block) leaves two helper
processes behind: the **resource tracker** and the **forkserver**. Both are the runner's children, started with its
file descriptors 1 and 2 (the output capture's pipes) and, the forkserver, the forked children's relay
(:mod:`labd.runner.spawned`); both live until the runner exits, so those pipes never reach end-of-file while the
runner waits for them at the session's end. The readers waited out their whole bound (2 s each) for every such
session. Stopping the helpers early is not an option (the tracker would unlink semaphores the runner still holds).

Instead, the waits at the end (:meth:`labd.runner.capture.OutputCapture.close`,
:meth:`labd.runner.forked.Relay.close`) end as soon as :func:`only_helpers_left`: every process still alive under
the runner (the runner is a child subreaper, so orphans are counted) is one of those helpers. Those write nothing of
their own while the runner lives, and a process they could start would be the workflow's (a worker, counted), so
once the pipes are drained nothing more can come. A session with any other process still alive (a worker, a forked
child, a server an agent started) waits as before, up to the bound.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

__all__ = ["helper_pids", "only_helpers_left", "wait_for"]

#: how often a wait at the session's end looks at the process tree again (only while a helper is alive)
POLL_S = 0.02


def helper_pids() -> set[int]:
    """Pids of the resource tracker and forkserver this process started (``multiprocessing`` and its ``multiprocess``
    fork; empty when the workflow never needed them). Read from those modules' state, only if imported."""
    pids: set[int] = set()
    for pkg in ("multiprocessing", "multiprocess"):
        tracker = getattr(sys.modules.get(f"{pkg}.resource_tracker"), "_resource_tracker", None)
        server = getattr(sys.modules.get(f"{pkg}.forkserver"), "_forkserver", None)
        for pid in (getattr(tracker, "_pid", None), getattr(server, "_forkserver_pid", None)):
            if isinstance(pid, int) and pid > 0:
                pids.add(pid)
    return pids


def only_helpers_left() -> bool:
    """True when at least one helper is alive and every other process under this one has ended (zombies count as
    ended: they hold no descriptors). False when there is no helper: then end-of-file is what to wait for."""
    helpers = helper_pids()
    if not helpers:
        return False
    import psutil  # here: most sessions never get this far, and the runner's start does not pay for the import

    try:
        tree = psutil.Process().children(recursive=True)
    except psutil.Error:
        return False
    alive = False
    for proc in tree:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:  # gone meanwhile
            continue
        if proc.pid not in helpers:
            return False
        alive = True
    return alive


def wait_for(join: Callable[[float], bool], timeout: float, drained: Callable[[], bool] = lambda: True) -> bool:
    """Wait until ``join(t)`` (waits at most ``t`` s; True once every writer is gone: end-of-file) says so, or until
    only helpers are left and ``drained()`` (nothing is unread or unprocessed), at most ``timeout`` s in all.
    Returns whether ``join`` saw the end. The helpers are looked at first and the pipes after: a process that ended
    before the look wrote all it wrote before it, so ``drained`` sees it. The first :data:`POLL_S` is a plain wait
    (end-of-file comes at once in the usual case: no scan of the process tree)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if join(max(0.0, min(POLL_S, left))):
            return True
        if left <= POLL_S:
            return False
        if only_helpers_left() and drained():
            return False
