"""daemon/forkrate.py: a burst of pids handed out since the last look, across the wrap at pid_max."""

from __future__ import annotations

import subprocess

from labd.daemon.forkrate import BURST, ForkRate, last_pid


def test_a_burst_is_seen_across_the_pid_wrap_and_a_trickle_is_not() -> None:
    """BURST pids or more since the previous look is a burst, fewer is not, also when pids wrapped at pid_max; the
    first look and an unreadable figure never are."""
    pids = [100]
    r = ForkRate(read=lambda: pids[0])
    r.pid_max = 1000
    assert not r.burst()  # first look
    pids[0] = 100 + BURST - 1
    assert not r.burst()
    pids[0] += BURST
    assert r.burst()
    pids[0] = 980
    r.burst()
    pids[0] = (980 + BURST) % 1000  # wrapped
    assert r.burst()
    pids[0] = None  # type: ignore[call-overload]
    assert not r.burst()


def test_the_last_pid_moves_with_the_processes_this_machine_starts() -> None:
    """The kernel's last pid (``/proc/loadavg``) grows by at least the number of processes started meanwhile."""
    before = last_pid()
    assert before is not None and before > 0
    started = []
    for _ in range(5):
        child = subprocess.Popen(["true"])
        started.append(child.pid)
        child.wait()
    after = last_pid()
    assert after is not None
    pid_max = ForkRate().pid_max
    moved = (after - before) % pid_max  # pids wrap at pid_max
    assert moved >= len(started), (before, after)
    # each pid handed out meanwhile lies in (before, after], the window the figure says was handed out
    assert all(0 < (pid - before) % pid_max <= moved for pid in started), (before, started, after)


def test_pids_are_counted_over_a_window_however_often_the_monitor_looks() -> None:
    """Looks every 20 ms (the monitor's tick while a session is CPU-throttled), 20 pids each: a storm within the 0.1 s
    window (it was counted from the previous look only, and 20 < BURST every time). The same pids spread over looks
    0.2 s apart are no storm."""
    pids, clock = [1000], [0.0]
    r = ForkRate(read=lambda: pids[0], clock=lambda: clock[0])
    assert not r.burst()
    seen = []
    for _ in range(5):
        pids[0] += 20
        clock[0] += 0.02
        seen.append(r.burst())
    assert any(seen), seen
    slow = ForkRate(read=lambda: pids[0], clock=lambda: clock[0])
    slow.burst()
    for _ in range(10):
        pids[0] += 20
        clock[0] += 0.2
        assert not slow.burst()
