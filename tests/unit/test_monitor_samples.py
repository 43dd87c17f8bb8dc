"""Which periodic resource samples the monitor records (idle sessions must cost ~nothing)."""

from __future__ import annotations

from labd.daemon.limits import Limits
from labd.daemon.monitor import Monitor
from labd.daemon.watched import Watched
from labd.ipc.samples import IDLE_RECORD_S


def _watched() -> Watched:
    w = Watched(sid="s1", pid=1, limits=Limits(), started=0.0)
    w.memory, w.cpu_percent, w.num_procs, w.peak_memory, w.peak_cpu = 50 << 20, 0.0, 1, 50 << 20, 3.0
    return w


def test_an_unchanged_sample_is_recorded_only_every_idle_period() -> None:
    """The first sample is recorded; the same figures again are not, until IDLE_RECORD_S has passed."""
    w = _watched()
    assert Monitor._changed(w, 100.0)
    w.recorded, w.recorded_at = (w.memory, w.cpu_percent, w.num_procs, w.peak_memory, w.peak_cpu), 100.0
    assert not Monitor._changed(w, 102.0)
    w.memory += 100 << 10  # 100 KiB: noise
    assert not Monitor._changed(w, 104.0)
    assert Monitor._changed(w, 100.0 + IDLE_RECORD_S)


def test_a_moved_figure_is_recorded_at_once() -> None:
    """Memory up by more than 1 MiB, CPU by a point, a new process or a new peak: recorded at the next sample."""
    for change in ("memory", "cpu", "procs", "peak"):
        w = _watched()
        w.recorded, w.recorded_at = (w.memory, w.cpu_percent, w.num_procs, w.peak_memory, w.peak_cpu), 100.0
        if change == "memory":
            w.memory += 2 << 20
        elif change == "cpu":
            w.cpu_percent = 1.5
        elif change == "procs":
            w.num_procs = 2
        else:
            w.peak_memory += 1
        assert Monitor._changed(w, 102.0), change
