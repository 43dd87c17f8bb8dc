"""The node-local monitor: limits of a session that runs on another machine, enforced where it runs.

The daemon's monitor (:mod:`labd.daemon.monitor`) reads the local process table, so it cannot see a runner on a
Ray node. This thread runs inside the session's Ray actor, beside the runner it started, samples the runner's
process tree (``psutil``) and enforces the same limits with the same outcomes: over its memory or process limit
the tree is killed at once (``action: kill``); over its wall time the daemon is told (``action: stop``) and runs
its ordinary stop ladder. Breaches and periodic ``resource.sample`` figures are queued as *notes* in the same
payload formats as the local monitor's; the launcher collects them and the daemon records them as
``limit.exceeded`` / ``resource.sample`` events. As on the daemon's monitor, the tree is sampled every 0.1 s only
while the session has a memory or process limit to enforce (else every ``record_interval``), and a periodic
sample is noted only when a figure moved or 30 s passed (:func:`labd.ipc.samples.worth_recording`).
A CPU limit (``--cpu``/``--cpus``: also the actor's Ray resource request, which only places it) is enforced as the
daemon's monitor does for a local runner: the tree is sampled every :data:`THROTTLE_TICK_S` while it uses CPU
(every :data:`CPU_COOL_S` while it uses next to nothing) and stopped (SIGSTOP) while it has used more than its quota
earned (:class:`labd.runner.cpu_bucket.CpuBucket`), then continued. Until 2026-12-07 it was only a reservation on
a node, though ``labd show`` listed it as a limit (a Ray review).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import psutil

from labd.ipc.samples import Figures, worth_recording
from labd.runner.cpu_bucket import CpuBucket

__all__ = ["NodeMonitor", "THROTTLE_TICK_S"]

#: the sampling period while a CPU limit is enforced (the daemon's monitor reads one process table for all its
#: sessions every 20 ms; a node monitor walks its tree with psutil: 50 ms)
THROTTLE_TICK_S = 0.05
#: the period while a CPU-limited tree uses next to nothing (its bucket full: an idle session; 4 passes a second)
CPU_COOL_S = 0.25


class NodeMonitor(threading.Thread):
    """Samples one runner's process tree; notes go to :meth:`take_notes`."""

    def __init__(self, pid: int, limits: dict[str, Any], started: float, interval: float | None = None,
                 record_interval: float = 2.0, limit_interval: float = 0.1) -> None:
        super().__init__(name="labd-node-monitor", daemon=True)
        self.pid, self.limits, self.started = pid, limits, started
        self.record_interval = record_interval
        # the daemon monitor's periods: fast only while a kill limit needs it: a memory limit, or a process limit
        # the tree is past half of (every session has one by default: daemon/limits.py, Limits.strict)
        self.fixed = interval is not None
        self.fast = min(limit_interval, record_interval)
        self.interval = interval if interval is not None else (
            self.fast if limits.get("memory") is not None else record_interval)
        self.slow = self.interval
        self._recorded: Figures | None = None  # figures of the last resource.sample noted
        self._recorded_at = 0.0
        self._lock = threading.Lock()
        self._notes: list[tuple[Any, ...]] = []
        self._halt = threading.Event()
        self.peak_rss = 0
        self.peak_cpu = 0.0
        self._breached = self._timed_out = False
        self._cpu: dict[int, tuple[float, float]] = {}
        self.cpu_seconds = 0.0  # the tree's CPU time at the last sample (its members then)
        self._members: list[psutil.Process] = []  # the tree at the last sample
        self.bucket = CpuBucket()
        self.stopped_until = 0.0  # monotonic time until which the tree is stopped for its CPU limit (0: running)

    def stop(self) -> None:
        self._halt.set()

    def take_notes(self) -> list[tuple[Any, ...]]:
        with self._lock:
            notes, self._notes = self._notes, []
        return notes

    def _note(self, *note: Any) -> None:
        with self._lock:
            self._notes.append(note)

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def kill_tree(self, sig: int = signal.SIGKILL) -> None:
        """Signal the runner's group and every member of its tree (members may have left the group: setsid),
        continued first (one stopped by the CPU limit would hold a SIGTERM until then)."""
        self._signal_tree(sig, cont=True)
        self.stopped_until = 0.0  # continued: its samples no longer say throttled

    def _signal_tree(self, sig: int, cont: bool = False, members: list[psutil.Process] | None = None) -> None:
        """``sig`` to the runner's group and to each of ``members`` (the tree read now if None). A throttle's
        stop and continue use the last sample's members: psutil refuses to signal a pid that another process took
        since (it checks the start time), and reading the tree again cost a /proc scan per signal."""
        for p in self._tree() if members is None else members:
            try:
                if cont:
                    p.send_signal(signal.SIGCONT)
                p.send_signal(sig)
            except psutil.Error:
                pass
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def throttle(self, now: float) -> None:
        """The CPU limit: continue the tree once its stop is over; stop it (SIGSTOP) for as long as its debt takes to
        pay at the quota when it used more than it earned since the last sample."""
        if self.stopped_until:
            if now < self.stopped_until:
                return
            self._signal_tree(signal.SIGCONT, members=self._members)
            self.stopped_until = 0.0
        stop = self.bucket.charge(self.cpu_seconds, now, float(self.limits["cpu"]) / 100.0)
        if stop > 0:
            self.stopped_until = now + stop
            self._signal_tree(signal.SIGSTOP, members=self._members)

    def sample(self) -> dict[str, Any]:
        """One reading of the tree (and the peaks so far), the local monitor's ``resource.sample`` fields."""
        members = self._tree()
        rss = cpu = seconds = 0.0
        now = time.monotonic()
        seen: dict[int, tuple[float, float]] = {}
        for p in members:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    total = t.user + t.system
            except psutil.Error:
                continue
            seconds += total
            prev = self._cpu.get(p.pid)
            if prev is not None and now > prev[1]:
                cpu += (total - prev[0]) / (now - prev[1]) * 100.0
            seen[p.pid] = (total, now)
        self._cpu, self._members = seen, members
        self.cpu_seconds = seconds
        self.peak_rss = max(self.peak_rss, int(rss))
        self.peak_cpu = max(self.peak_cpu, cpu)
        return {"rss": int(rss), "rss_sum": int(rss), "cpu_percent": round(cpu, 1), "num_procs": len(members),
                "peak_rss": self.peak_rss, "peak_cpu_percent": round(self.peak_cpu, 1),
                "throttled": self.stopped_until > 0}

    def _record(self, s: dict[str, Any], now: float, periodic: bool = True) -> None:
        """Note ``s`` as a ``resource.sample`` unless ``periodic`` and no figure moved since the last one."""
        figures: Figures = (s["rss"], s["cpu_percent"], s["num_procs"], s["peak_rss"], s["peak_cpu_percent"])
        if periodic and not worth_recording(self._recorded, figures, now - self._recorded_at):
            return
        self._recorded, self._recorded_at = figures, now
        self._note("event", "resource.sample", s)

    def pace(self, num_procs: int) -> None:
        """The fast period while the tree is past half its process limit, the slow one again once it is not."""
        procs = self.limits.get("procs")
        if not self.fixed:
            self.interval = self.fast if procs is not None and num_procs > procs / 2 else self.slow

    def _next_wait(self) -> float:
        """The pass interval, shortened to wake up when the wall-time limit runs out (a session with only a
        timeout is sampled every ``record_interval``, yet stopped on time, as the daemon's monitor does)."""
        wait = self.interval
        cpu_limit = self.limits.get("cpu")
        if cpu_limit is not None and not self.fixed:
            # a tree that used CPU lately (or is stopped for it) is read every 50 ms; an idle one four times a second:
            # a tree that turns busy runs up to that long before its first stop, and pays it back after
            rested = self.bucket.rested(float(cpu_limit) / 100.0)
            wait = min(wait, CPU_COOL_S if rested else THROTTLE_TICK_S)
        if self.stopped_until:  # continued on time
            wait = min(wait, max(0.002, self.stopped_until - time.monotonic()))
        timeout = self.limits.get("timeout")
        if timeout is None or self._timed_out:
            return wait
        return max(0.01, min(wait, self.started + timeout - time.time() + 0.01))

    def run(self) -> None:
        try:
            self._run()
        finally:
            if self.stopped_until:  # never leave the tree stopped behind (the actor's end stops this thread)
                self._signal_tree(signal.SIGCONT)

    def _run(self) -> None:
        last_record = 0.0
        lim = self.limits
        last: dict[str, Any] | None = None
        while not self._halt.wait(self._next_wait()):
            s = self.sample()
            if not s["num_procs"]:
                if last is not None:  # the runner is gone: its last figures (the peaks) unless noted already
                    self._record(last, time.monotonic())
                return
            last = s
            self.pace(s["num_procs"])
            if not self._breached and lim.get("memory") is not None and s["rss"] > lim["memory"]:
                self._breached = True  # noted before the kill, so the breach is recorded before the exit
                self._note("limit", {"limit": "memory", "measured": s["rss"], "max": lim["memory"], "unit": "bytes",
                                     "action": "kill"})
                self.kill_tree()
                self._record(s, time.monotonic(), periodic=False)  # the peak that broke the limit
            if not self._breached and lim.get("procs") is not None and s["num_procs"] > lim["procs"]:
                self._breached = True
                self._note("limit", {"limit": "processes", "measured": s["num_procs"], "max": lim["procs"],
                                     "unit": "processes", "action": "kill"})
                self.kill_tree()
                self._record(s, time.monotonic(), periodic=False)
            wall = time.time() - self.started
            if not self._timed_out and lim.get("timeout") is not None and wall > lim["timeout"]:
                self._timed_out = True
                self._note("limit", {"limit": "wall time", "measured": round(wall, 2), "max": lim["timeout"],
                                     "unit": "seconds", "action": "stop"})
            now = time.monotonic()
            if lim.get("cpu") is not None and not self._breached:
                self.throttle(now)
            if now - last_record >= self.record_interval:
                last_record = now
                self._record(s, now)
