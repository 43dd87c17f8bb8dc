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
child, a server an agent started) waits as before, up to the bound. Not covered: a thread the workflow left running
that has the forkserver start a worker after the last look; that worker's output after the wait ends is not
recorded (docs/design.md).
"""

from __future__ import annotations

import os
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
    """True when at least one helper is alive and every other process under this one has ended. A zombie counts as
    ended only when no thread of it is left: a process whose main thread exited while others still run shows as a
    zombie too, and those threads may still write. False when there is no helper: then end-of-file is what to wait
    for."""
    helpers = helper_pids()
    if not helpers:
        return False
    alive = False
    for pid in _descendants(os.getpid()):
        if not _running(pid):
            continue
        if pid not in helpers:
            return False
        alive = True
    return alive


def _descendants(root: int) -> list[int]:
    """Pids of every process under ``root``, read from ``/proc/PID/task/TID/children`` (this process's own tree
    only: a scan of all of /proc cost ~1 ms per look with 70 processes on the box and ~100 ms with 2,000, every
    :data:`POLL_S`). Without that file (a kernel built without it), from one pass over /proc's parent links."""
    if not _HAVE_CHILDREN_FILE:
        return _descendants_by_scan(root)
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:  # gone meanwhile
            continue
        for tid in tids:  # a child is listed under the thread that started it (or, for an orphan, that reaps it)
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    kids = [int(k) for k in f.read().split()]
            except (OSError, ValueError):
                continue
            found += kids
            todo += kids
    return found


def _descendants_by_scan(root: int) -> list[int]:
    """:func:`_descendants` from every process's parent link (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                children.setdefault(int(stat[1]), []).append(int(name))
    found: list[int] = []
    todo = [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command's name (state, ppid, ...); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].decode().split()


def _running(pid: int) -> bool:
    """Whether ``pid`` may still write: not gone, and not a zombie unless threads of it still run (field 20 of
    stat, the number of threads, counts the exited leader: 1 for a true zombie)."""
    stat = _stat(pid)
    if stat is None:
        return False
    return stat[0] not in ("Z", "X") or int(stat[17]) > 1


#: whether this kernel lists a task's children (CONFIG_PROC_CHILDREN; Debian's and most distributions' kernels do)
_HAVE_CHILDREN_FILE = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


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
