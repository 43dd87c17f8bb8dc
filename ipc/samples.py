"""When a periodic ``resource.sample`` is worth an event: the one rule of the daemon's monitor
(:mod:`labd.daemon.monitor`) and of a remote session's node monitor (:mod:`labd.runner.node_monitor`).

A sample is recorded when a figure moved -- memory by more than :data:`MEMORY_STEP` or 2 %, CPU by a point, the
process count, a peak -- or :data:`IDLE_RECORD_S` after the last one: 500 idle sessions recording identical
samples every 2 s cost the daemon more than everything else, and an idle session needs no more than a sign of
life twice a minute.
"""

from __future__ import annotations

__all__ = ["IDLE_RECORD_S", "MEMORY_STEP", "Figures", "worth_recording"]

IDLE_RECORD_S = 30.0
MEMORY_STEP = 1 << 20

#: (memory bytes, CPU percent, processes, peak memory bytes, peak CPU percent)
Figures = tuple[int, float, int, int, float]


def worth_recording(last: Figures | None, now: Figures, age: float) -> bool:
    """Record ``now``, given the ``last`` figures recorded ``age`` seconds ago (None: nothing recorded yet)?"""
    if last is None or age >= IDLE_RECORD_S:
        return True
    memory, cpu, procs, peak_memory, peak_cpu = last
    return (abs(now[0] - memory) > max(MEMORY_STEP, memory * 0.02) or abs(now[1] - cpu) >= 1.0
            or now[2] != procs or now[3] != peak_memory or now[4] >= peak_cpu + 1.0)
