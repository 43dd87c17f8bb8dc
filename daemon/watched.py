"""One watched session's state in the limits monitor, the signals sent to its tree, and its CPU throttle.

Split from :mod:`labd.daemon.monitor` (the thread and its passes over the process table): what is here acts on
one session and needs no process-table pass.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from labd.daemon.launcher import signal_group
from labd.daemon.limits import Limits
from labd.daemon.proctable import Proc, read_proc
from labd.runner.cpu_bucket import CpuBucket

__all__ = ["Watched", "figures", "sample_payload", "kill_proc", "signal_members", "throttle"]


@dataclass
class Watched:
    """What the monitor knows of one watched session (its runner's tree, figures, throttle state)."""

    sid: str
    pid: int
    limits: Limits
    started: float  # wall-clock start, for the timeout
    start_key: int | None = None  # the runner's start time in ticks, once seen
    members: list[Proc] = field(default_factory=list)
    keys: set[tuple[int, int]] = field(default_factory=set)  # every process ever seen in the tree
    cpu_total: float = 0.0
    cpu_at: float = 0.0
    cpu_percent: float = 0.0
    memory: int = 0
    rss: int = 0
    num_procs: int = 1
    peak_memory: int = 0
    peak_cpu: float = 0.0
    near: bool = False
    #: past half its process-count limit: the monitor samples it at the fast period until it drops back
    procs_near: bool = False
    # throttling
    bucket: CpuBucket = field(default_factory=CpuBucket)
    stopped_until: float = 0.0
    breached: bool = False
    procs_reported: bool = False
    tasks_refused: int = 0  # the kernel's refusals at the session's task bound (its cgroup's pids.max) reported so far
    tasks_checked_cpu: float = -1.0  # the tree's CPU total when they were last read (unchanged: not read again)
    timeout_reported: bool = False
    fresh: bool = True  # sampled FRESH_DELAY_S after the watch began, so even short sessions get their peaks
    watched_at: float = 0.0  # monotonic time the watch began
    seen_at: float | None = None
    recorded: tuple[int, float, int, int, float] | None = None  # figures of the last resource.sample event
    recorded_at: float = 0.0  # wall time of the last pass that found the runner alive (its liveness)


def figures(w: Watched) -> dict[str, Any]:
    """The live figures of a watched session, as ``status``/``ps`` show them."""
    return {"rss": w.memory, "rss_sum": w.rss, "cpu_percent": round(w.cpu_percent, 1), "num_procs": w.num_procs,
            "peak_rss": w.peak_memory, "peak_cpu_percent": round(w.peak_cpu, 1), "throttled": w.stopped_until > 0,
            "seen_at": w.seen_at}


def sample_payload(w: Watched) -> dict[str, Any]:
    """A ``resource.sample`` payload of ``w`` now, noted as recorded."""
    w.recorded = (w.memory, w.cpu_percent, w.num_procs, w.peak_memory, w.peak_cpu)
    w.recorded_at = time.monotonic()
    return {"rss": w.memory, "rss_sum": w.rss, "cpu_percent": round(w.cpu_percent, 1), "num_procs": w.num_procs,
            "peak_rss": w.peak_memory, "peak_cpu_percent": round(w.peak_cpu, 1)}


def signal_members(w: Watched, sig: int) -> None:
    """Send ``sig`` to the runner's process group and to every member of the tree outside it."""
    signal_group(w.pid, sig)
    for p in w.members:
        if p.pgid != w.pid:
            kill_proc(p, sig)


def throttle(w: Watched, now: float) -> None:
    """The CPU limit as a token bucket refilled at the quota (a fraction of one core): a tree that used more
    than it earned is stopped (SIGSTOP) until the debt is paid, then continued. Members are re-read here."""
    if w.stopped_until:
        if now < w.stopped_until:
            return
        signal_members(w, signal.SIGCONT)
        w.stopped_until = 0.0
    total = sum(p.cpu for p in (read_proc(m.pid) for m in w.members) if p is not None)
    stop = w.bucket.charge(total, now, (w.limits.cpu or 100.0) / 100.0)
    if stop > 0:
        w.stopped_until = now + stop
        signal_members(w, signal.SIGSTOP)


def kill_proc(p: Proc, sig: int) -> None:
    """Signal a process seen in a pass, unless its pid now names another process (checked by start time:
    a pass can be up to ``sample_interval`` old, and a fork storm recycles pids quickly)."""
    now = read_proc(p.pid)
    if now is None or now.start != p.start:
        return
    try:
        os.kill(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
