"""The limits monitor: psutil sampling of every runner's process tree, limit enforcement, CPU throttling.

One thread for all sessions. Every ``sample_interval`` it measures each tree (RSS, CPU %, process
count), kills a tree over its memory limit at once, reports a wall-time breach to the supervisor
(which stops the session through the shutdown ladder), and notices runners that vanished. Every
``record_interval`` it records a ``resource.sample`` event with the peaks.

CPU limits are enforced by throttling: a token bucket per session refilled at the quota (a fraction
of one core); when the tree has used more CPU than it earned, the whole process group is stopped
(SIGSTOP) until the debt is paid, then continued (SIGCONT). cgroup v2 would be smoother, but is not
available everywhere (DESIGN.md §6: psutil enforcement is required, cgroups optional).
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import structlog
import zmq

from labd.daemon.ingest import INGEST_IN, INGEST_NOTIFY
from labd.daemon.launcher import signal_group

__all__ = ["Monitor", "Limits"]

THROTTLE_TICK_S = 0.02
BURST_S = 0.1  # how much CPU time a throttled session may bank


@dataclass(frozen=True)
class Limits:
    """Per-session limits; None means unlimited."""

    memory: int | None = None  # bytes, RSS of the whole tree
    cpu: float | None = None  # percent of one core
    timeout: float | None = None  # wall seconds since start
    budget: float | None = None  # USD of LLM usage (enforced from cost events by ingest + supervisor)
    budget_action: str = "stop"  # stop | pause

    def to_dict(self) -> dict[str, Any]:
        return {"memory": self.memory, "cpu": self.cpu, "timeout": self.timeout, "budget": self.budget,
                "budget_action": self.budget_action}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Limits:
        return cls(memory=d.get("memory"), cpu=d.get("cpu"), timeout=d.get("timeout"), budget=d.get("budget"),
                   budget_action=d.get("budget_action") or "stop")


@dataclass
class _Watched:
    sid: str
    proc: psutil.Process
    limits: Limits
    started: float  # wall-clock start, for the timeout
    tree: list[psutil.Process] = field(default_factory=list)
    tree_at: float = 0.0
    cpu_total: float = 0.0
    cpu_at: float = 0.0
    cpu_percent: float = 0.0
    rss: int = 0
    num_procs: int = 1
    peak_rss: int = 0
    peak_cpu: float = 0.0
    # throttling
    allowance: float = 0.0
    t_total: float = 0.0
    t_at: float = 0.0
    stopped_until: float = 0.0
    breached: bool = False
    timeout_reported: bool = False
    fresh: bool = True  # sampled on the monitor's next tick, so even short sessions get their peaks


class Monitor(threading.Thread):
    """Samples and enforces limits; talks to ingest (events) and the supervisor (notes) over inproc."""

    def __init__(self, zctx: zmq.Context, sample_interval: float, record_interval: float) -> None:
        super().__init__(name="labd-monitor", daemon=True)
        self.zctx = zctx
        self.sample_interval = sample_interval
        self.record_interval = record_interval
        self._lock = threading.Lock()
        self._watched: dict[str, _Watched] = {}
        self._halt = threading.Event()
        self.log = structlog.get_logger("labd.monitor")

    # ---- called from the supervisor (main thread) -------------------------------------------------
    def watch(self, sid: str, pid: int, limits: Limits, started: float) -> None:
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        # A runner adopted after a daemon crash may have been left stopped by the old daemon's throttle.
        signal_group(pid, signal.SIGCONT)
        with self._lock:
            self._watched[sid] = _Watched(sid, proc, limits, started, t_at=time.monotonic())

    def unwatch(self, sid: str) -> None:
        with self._lock:
            w = self._watched.pop(sid, None)
        if w is not None and w.stopped_until:
            signal_group(w.proc.pid, signal.SIGCONT)  # never leave a group stopped behind

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {sid: {"rss": w.rss, "cpu_percent": round(w.cpu_percent, 1), "num_procs": w.num_procs,
                          "peak_rss": w.peak_rss, "peak_cpu_percent": round(w.peak_cpu, 1),
                          "throttled": w.stopped_until > 0}
                    for sid, w in self._watched.items()}

    def stop(self) -> None:
        self._halt.set()

    # ---- thread -----------------------------------------------------------------------------------
    def run(self) -> None:
        self.out = self.zctx.socket(zmq.PUSH)
        self.out.connect(INGEST_IN)
        self.notes = self.zctx.socket(zmq.PUSH)
        self.notes.connect(INGEST_NOTIFY)
        next_sample = next_record = time.monotonic()
        try:
            while not self._halt.is_set():
                with self._lock:
                    watched = list(self._watched.values())
                throttled = [w for w in watched if w.limits.cpu is not None]
                now = time.monotonic()
                for w in throttled:
                    self._throttle(w, now)
                for w in watched:
                    if w.fresh:
                        w.fresh = False
                        self._sample(w, now, False)
                if now >= next_sample:
                    next_sample = now + self.sample_interval
                    record = now >= next_record
                    if record:
                        next_record = now + self.record_interval
                    for w in watched:
                        self._sample(w, now, record)
                self._halt.wait(THROTTLE_TICK_S if throttled else min(self.sample_interval, 0.1))
        finally:
            with self._lock:
                for w in self._watched.values():
                    if w.stopped_until:
                        signal_group(w.proc.pid, signal.SIGCONT)
            self.out.close(0)
            self.notes.close(0)

    def _event(self, sid: str, kind: str, payload: dict[str, Any]) -> None:
        self.out.send_pyobj(("event", sid, kind, payload, None, None))

    def _refresh_tree(self, w: _Watched, now: float) -> list[psutil.Process]:
        if now - w.tree_at > 0.5:
            try:
                w.tree = [w.proc, *w.proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                w.tree = []
            w.tree_at = now
        return w.tree

    @staticmethod
    def _cpu_of(tree: list[psutil.Process]) -> float:
        total = 0.0
        for p in tree:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _throttle(self, w: _Watched, now: float) -> None:
        pid = w.proc.pid
        if w.stopped_until:
            if now < w.stopped_until:
                return
            signal_group(pid, signal.SIGCONT)
            w.stopped_until = 0.0
        quota = (w.limits.cpu or 100.0) / 100.0
        total = self._cpu_of(self._refresh_tree(w, now))
        if w.t_total == 0.0:
            w.t_total, w.t_at, w.allowance = total, now, 0.0
            return
        used = max(0.0, total - w.t_total)
        w.allowance = min(w.allowance + quota * (now - w.t_at), quota * BURST_S) - used
        w.t_total, w.t_at = total, now
        if w.allowance < 0:
            pause = -w.allowance / quota
            if signal_group(pid, signal.SIGSTOP):
                w.stopped_until = now + pause

    def _sample(self, w: _Watched, now: float, record: bool) -> None:
        sid = w.sid
        try:
            alive = w.proc.is_running() and w.proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        if not alive:
            self.notes.send_pyobj(("vanished", sid))
            with self._lock:
                self._watched.pop(sid, None)
            return
        tree = self._refresh_tree(w, now)
        rss = 0
        for p in tree:
            try:
                rss += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        total = self._cpu_of(tree)
        if w.cpu_at:
            w.cpu_percent = max(0.0, (total - w.cpu_total) / max(1e-6, now - w.cpu_at) * 100.0)
        w.cpu_total, w.cpu_at = total, now
        w.rss, w.num_procs = rss, len(tree)
        w.peak_rss = max(w.peak_rss, rss)
        w.peak_cpu = max(w.peak_cpu, w.cpu_percent)
        lim = w.limits
        if lim.memory is not None and rss > lim.memory and not w.breached:
            w.breached = True
            # The note goes out before the kill, so the supervisor records the breach before the exit.
            self.notes.send_pyobj(("limit", sid, {"limit": "memory", "measured": rss, "max": lim.memory,
                                                  "unit": "bytes", "action": "kill"}))
            self.log.warning("memory limit exceeded: killing", session_id=sid, rss=rss, limit=lim.memory)
            signal_group(w.proc.pid, signal.SIGCONT)
            signal_group(w.proc.pid, signal.SIGKILL)
            record = True
        elapsed = time.time() - w.started
        if lim.timeout is not None and elapsed > lim.timeout and not w.timeout_reported:
            w.timeout_reported = True
            self.notes.send_pyobj(("limit", sid, {"limit": "wall time", "measured": round(elapsed, 2),
                                                  "max": lim.timeout, "unit": "seconds", "action": "stop"}))
        if record:
            self._event(sid, "resource.sample", {"rss": rss, "cpu_percent": round(w.cpu_percent, 1),
                                                 "num_procs": len(tree), "peak_rss": w.peak_rss,
                                                 "peak_cpu_percent": round(w.peak_cpu, 1)})
