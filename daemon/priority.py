"""Runners' CPU priority: session code yields the CPU to the daemon's recording when both want it.

On a box with fewer cores than busy runners, the kernel shares the CPU among them and the daemon alike, and the
ingest thread (the one writer of the store) spent a third of its time runnable but waiting for a core
(docs/design.md, "Event path end to end"). A runner started at a higher niceness (``[daemon] runner_nice``)
leaves the daemon ahead of it when both are runnable, and costs nothing when the CPU is free.

Two mechanisms, both applied, because which one counts depends on the box: with the kernel's autogroup
scheduling (``/proc/sys/kernel/sched_autogroup_enabled``, tasks in the root cgroup) every ``setsid`` makes a new
group scheduled as one unit and only the group's nice value competes with the daemon; otherwise (e.g. systemd
cgroups) each thread's own nice value does. Raising niceness needs no privilege, and session code cannot lower
it again without one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["lower_priority", "MAX_NICE"]

MAX_NICE = 19


def lower_priority(pid: int, nice: int) -> None:
    """Make ``pid`` (every thread it has now; threads and children it creates later inherit it) and its autogroup
    run at niceness ``nice`` (0: leave it alone). Best effort: a process that already exited, a kernel without
    autogroups or a refused write changes nothing and raises nothing."""
    if nice <= 0:
        return
    group = Path(f"/proc/{pid}/autogroup")  # the autogroup of its session (the runner called setsid)
    with contextlib.suppress(OSError, ValueError, IndexError):
        if int(group.read_text().split()[-1]) < nice:  # "/autogroup-123 nice 0"
            group.write_text(str(nice))
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:  # Linux keeps a nice value per thread: PRIO_PROCESS with a thread id sets that thread's
        with contextlib.suppress(OSError):
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:  # never lower one (that would need a privilege)
                os.setpriority(os.PRIO_PROCESS, tid, nice)
