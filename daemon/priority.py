"""Runners' CPU priority: session code yields the CPU to the daemon's recording when both want it.

On a box with fewer cores than busy runners, the kernel shares the CPU among them and the daemon alike, and the
ingest thread (the one writer of the store) spent a third of its time runnable but waiting for a core
(docs/design.md, "Event path end to end"). A runner started ``[daemon] runner_nice`` steps of niceness below the
daemon leaves the daemon ahead of it when both are runnable, and costs nothing when the CPU is free.

Two mechanisms, both applied, because which one counts depends on the box: with the kernel's autogroup
scheduling (``/proc/sys/kernel/sched_autogroup_enabled``, tasks in the root cgroup) every session (``setsid``) is
a group scheduled as one unit and only the group's nice value competes with the daemon's group: runners all share
the template's session, so this sets that one group's value; otherwise (e.g. systemd cgroups) each thread's own
nice value does. Raising niceness needs no privilege.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["lower_priority", "own_priority", "group_nice", "MAX_NICE"]

MAX_NICE = 19
MAX_PASSES = 8  # listings of a runner's threads (a runner starting threads without end is not waited for)


def group_nice(pid: int | str) -> int | None:
    """The nice value of a process's autogroup (``/autogroup-123 nice 0``); None without autogroups, and None for a
    process in the root autogroup (a session that never called ``setsid``, e.g. one a container started), whose
    file the kernel leaves empty and whose value cannot be changed."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def own_priority() -> tuple[int, int | None]:
    """This process's (thread nice value, autogroup nice value or None): what runners are placed relative to."""
    return os.getpriority(os.PRIO_PROCESS, 0), group_nice("self")


def lower_priority(pid: int, steps: int, base: tuple[int, int | None] | None = None) -> None:
    """Make ``pid`` (every thread it has now; threads and children it creates later inherit it) and its autogroup
    run ``steps`` nice values below ``base`` (default: this process's :func:`own_priority`), capped at 19. Best
    effort: a process that already exited, a kernel without autogroups or a refused change (a value below the
    current one needs a privilege) changes nothing and raises nothing."""
    if steps < 0:
        raise ValueError("steps must be >= 0")
    thread_base, group_base = base if base is not None else own_priority()
    target = min(MAX_NICE, thread_base + steps)
    if group_base is not None:  # the autogroup of the runner's session: the template's, shared by all runners
        group_target = min(MAX_NICE, group_base + steps)
        current = group_nice(pid)
        if current is not None and current != group_target:
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/autogroup").write_text(str(group_target))
    # Linux keeps a nice value per thread: PRIO_PROCESS with a thread id sets that thread's. A thread the runner
    # starts while this runs inherits its creator's value, possibly from before the change (a CI run found a runner
    # thread left at 0): the threads are listed again until a listing has none not yet set, so each thread is one
    # set here or one created by such a one.
    done: set[int] = set()
    for _ in range(MAX_PASSES):
        try:
            tids = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        except OSError:
            tids = {pid}
        new = tids - done
        if not new:
            break
        for tid in sorted(new):
            with contextlib.suppress(OSError):
                if os.getpriority(os.PRIO_PROCESS, tid) != target:
                    os.setpriority(os.PRIO_PROCESS, tid, target)
        done |= new
