"""A session's CPU limit (``--cpu``, a fraction of one core) as a token bucket: shared by the daemon's monitor, which
throttles local runners (:func:`labd.daemon.watched.throttle`), and the node monitor inside a Ray actor, which
throttles a runner on its node (:class:`labd.runner.node_monitor.NodeMonitor`). The tree earns CPU time at the quota
and may bank at most :data:`BURST_S` of it; a tree that used more than it earned is stopped (SIGSTOP, by the caller)
for as long as paying the debt takes at the quota, then continued (SIGCONT).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BURST_S", "CpuBucket"]

BURST_S = 0.1  # how much CPU time a throttled session may bank


@dataclass
class CpuBucket:
    """The CPU a session's tree may still use: readings of its total CPU time go in, stop times come out."""

    allowance: float = 0.0
    t_total: float = 0.0  # the tree's CPU seconds at the last reading (0: none yet)
    t_at: float = 0.0  # when that reading was taken (monotonic seconds)

    def rested(self, quota: float) -> bool:
        """Whether the bucket is full: the tree used (almost) nothing beyond what it earned lately. A tree that used
        CPU since, or is stopped paying a debt, is not (nor one just continued: its last reading shows the stop)."""
        return self.allowance >= quota * BURST_S * 0.99

    def charge(self, total: float, now: float, quota: float) -> float:
        """Take a reading (``total`` CPU seconds of the tree at ``now``; ``quota``: cores it may use); returns how many
        seconds to stop it for (0: it may run on). The first reading only starts the count."""
        if self.t_total == 0.0:
            self.t_total, self.t_at, self.allowance = total, now, 0.0
            return 0.0
        used = max(0.0, total - self.t_total)  # a member that exited takes its CPU time with it: never negative
        self.allowance = min(self.allowance + quota * (now - self.t_at), quota * BURST_S) - used
        self.t_total, self.t_at = total, now
        return -self.allowance / quota if self.allowance < 0 else 0.0
