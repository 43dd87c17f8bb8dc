"""The node monitor of a remote (Ray) session (labd.runner.node_monitor), on a real local process: it samples fast
only while a kill limit needs it and notes a periodic resource.sample only when a figure moved, by the daemon
monitor's rule (labd.ipc.samples)."""

from __future__ import annotations

import subprocess
import sys
import time

from labd.ipc.samples import IDLE_RECORD_S
from labd.runner.node_monitor import NodeMonitor
from tests.conftest import wait_until
from tests.support.procmem import run_delay


def test_fast_sampling_only_with_a_kill_limit() -> None:
    """0.1 s passes with a memory limit, or while the tree is past half its process limit (every session has one
    by default: fast passes for all would walk /proc ten times a second per Ray session); otherwise one pass per
    record interval (a wall-time limit alone needs no fast pass, only a wake-up when it runs out)."""
    assert NodeMonitor(1, {"memory": 1 << 30}, 0.0).interval == 0.1
    m = NodeMonitor(1, {"procs": 256}, 0.0)
    assert m.interval == 2.0
    m.pace(129)
    assert m.interval == 0.1
    m.pace(100)
    assert m.interval == 2.0
    fixed = NodeMonitor(1, {"procs": 4}, 0.0, interval=0.5)
    fixed.pace(100)
    assert fixed.interval == 0.5
    assert NodeMonitor(1, {"timeout": 60}, 0.0).interval == 2.0
    assert NodeMonitor(1, {}, 0.0, record_interval=5.0).interval == 5.0
    soon = NodeMonitor(1, {"timeout": 1.0}, time.time())  # wakes when the wall time runs out, not 2 s later
    assert 0.01 <= soon._next_wait() <= 1.02  # noqa: SLF001


def _samples(m: NodeMonitor) -> list[dict[str, object]]:
    return [n[2] for n in m.take_notes() if n[:2] == ("event", "resource.sample")]


def test_identical_samples_are_noted_once_until_the_idle_period() -> None:
    """The same figures (memory within noise) are noted once; again once IDLE_RECORD_S has passed; a moved figure
    at once; a limit breach notes its sample whatever the rule says."""
    m = NodeMonitor(1, {}, 0.0)
    first = {"rss": 50 << 20, "rss_sum": 50 << 20, "cpu_percent": 0.0, "num_procs": 1, "peak_rss": 50 << 20,
             "peak_cpu_percent": 3.0}
    m._record(first, 100.0)  # noqa: SLF001 - the periodic path of run(), without its clock
    for i in range(1, 6):
        m._record(first | {"rss": first["rss"] + i * 1024}, 100.0 + i)  # noqa: SLF001
    assert len(_samples(m)) == 1
    m._record(first, 100.0 + IDLE_RECORD_S)  # noqa: SLF001
    assert len(_samples(m)) == 1
    m._record(first | {"num_procs": 2}, 101.0 + IDLE_RECORD_S)  # noqa: SLF001
    assert len(_samples(m)) == 1
    m._record(first | {"num_procs": 2}, 102.0 + IDLE_RECORD_S, periodic=False)  # noqa: SLF001
    assert len(_samples(m)) == 1


def test_the_thread_notes_an_idle_runner_once_and_stops_when_it_exits() -> None:
    """Run as a thread on an idle process with a short record interval, the monitor notes one resource.sample
    for many passes, and ends when the process does (no further note for unchanged figures)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"  # started: idle from now on
    m = NodeMonitor(proc.pid, {}, time.time(), record_interval=0.02)
    notes: list[dict[str, object]] = []
    m.start()
    try:
        wait_until(lambda: notes.extend(_samples(m)) or len(notes) >= 1, timeout=30)
        passes = 0

        def many_passes() -> bool:
            nonlocal passes
            passes += 1
            notes.extend(_samples(m))
            return passes >= 20
        wait_until(many_passes, timeout=30, interval=0.02)
    finally:
        proc.kill()
        proc.wait()
    m.join(30)
    notes.extend(_samples(m))
    assert not m.is_alive()
    # the first pass has no CPU figure yet, so the second may move it once: a note or two, not one per pass
    assert 1 <= len(notes) <= 3, notes


def test_a_cpu_limit_holds_a_busy_tree_to_its_quota_on_the_node() -> None:
    """A busy loop whose session has ``--cpu 30%`` gets at most 30 % of a core (+15 %) while the node monitor runs
    beside it, and no less than 30 % -15 % unless the box had no CPU to give it; it is continued when the monitor
    stops (never left stopped), and its samples say it is throttled. A Ray session's ``--cpu`` was only the
    actor's reservation: the loop took a whole core."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", "print('ready', flush=True)\nwhile True: pass"],
                            stdout=subprocess.PIPE, start_new_session=True)
    try:  # the busy loop is killed whatever fails (a leaked one loaded the box for every later test)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        m = NodeMonitor(proc.pid, {"cpu": 30.0}, time.time(), record_interval=0.5)
        ps = psutil.Process(proc.pid)
        m.start()
        try:
            wait_until(lambda: m.stopped_until > 0, timeout=30, interval=0.01, what="the first stop")
            c0, d0, start = sum(ps.cpu_times()[:2]), run_delay(proc.pid), time.monotonic()
            wait_until(lambda: time.monotonic() - start > 4.0, timeout=10, interval=0.2, what="measurement window")
            c1, d1, wall = sum(ps.cpu_times()[:2]), run_delay(proc.pid), time.monotonic() - start
            share, starved = (c1 - c0) / wall * 100, (d1 - d0) / wall * 100
            assert share <= 30 * 1.15, f"cpu share {share:.1f}% over 30% +15%"
            assert share >= 30 * 0.85 or share + starved >= 30 * 0.85, \
                f"cpu share {share:.1f}% under 30% -15% with only {starved:.1f}% spent waiting for a CPU"
            assert any(s.get("throttled") for s in _samples(m))  # recorded every 0.5 s; stopped ~70 % of the time
        finally:
            m.stop()
            m.join(10)
        assert not m.is_alive()
        wait_until(lambda: ps.status() != psutil.STATUS_STOPPED, timeout=5, interval=0.01, what="continued")
    finally:
        proc.kill()
        proc.wait()
