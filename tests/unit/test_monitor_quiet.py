"""Quiet ticks (daemon/monitor.py): while no watched session is new, near a limit, throttled or buried, the monitor's
tick between passes only looks for a fork storm. Before, every tick (ten a second, since every session has a process
limit) looked at each session: 100 idle sessions cost the daemon ~0.15 % of a core more. What must still happen at
once does."""

from __future__ import annotations

import _thread
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from labd.daemon.limits import Limits
from tests.conftest import wait_until
from tests.support.monitor_rig import TimedMonitor, running_monitor


@pytest.fixture
def monitor() -> Iterator[TimedMonitor]:
    with running_monitor() as m:
        yield m


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def _sampled(monitor: TimedMonitor, sid: str) -> None:
    wait_until(lambda: (monitor.snapshot_of(sid) or {}).get("peak_rss"), timeout=30, what=f"{sid}'s first sample")


def test_an_idle_session_costs_no_full_tick_between_passes(monitor: TimedMonitor,
                                                           sleeper: subprocess.Popen[bytes]) -> None:
    """Once an idle session with a process limit has had its first sample, a second goes by with at most one full
    tick (there were ten: the process limit makes the monitor tick every 0.1 s to catch a fork storm)."""
    monitor.watch("idle", sleeper.pid, Limits(procs=256), time.time())
    _sampled(monitor, "idle")
    time.sleep(0.3)  # the tick after the first pass is a full one (it finds the loop quiet)
    before = monitor.full_ticks
    deadline = time.monotonic() + 1.0
    wait_until(lambda: time.monotonic() >= deadline, timeout=5, interval=0.05, what="a second of quiet ticks")
    assert monitor.full_ticks - before <= 1, monitor.full_ticks - before


def test_a_session_watched_while_the_loop_is_quiet_is_passed_at_its_own_period(
        monitor: TimedMonitor, sleeper: subprocess.Popen[bytes]) -> None:
    """A session with a memory limit watched while the others are quiet gets the fast period (a pass every
    ``limit_interval``: the breach -> kill bound), not the 60 s sampling period."""
    monitor.watch("idle", sleeper.pid, Limits(procs=256), time.time())
    _sampled(monitor, "idle")
    time.sleep(0.3)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        monitor.watch("limited", child.pid, Limits(memory=1 << 30, procs=256), time.time())
        _sampled(monitor, "limited")
        first = len(monitor.pass_times)
        wait_until(lambda: len(monitor.pass_times) >= first + 3, timeout=30, what="passes at the fast period")
    finally:
        child.kill()
        child.wait()


def test_a_fork_storm_during_quiet_ticks_brings_a_pass_at_once(monitor: TimedMonitor,
                                                                sleeper: subprocess.Popen[bytes]) -> None:
    """Quiet ticks still read the kernel's last pid: a storm of new tasks meanwhile (any process's) brings the next
    pass forward from 60 s to the next tick. The storm is 300 threads started at once (threads take pids as
    processes do), without waiting for each to run: 100 processes started one by one with ``subprocess``, and then
    300 ``Thread.start`` calls, took longer than the 0.1 s window on a loaded box, too slow a storm to be one."""
    monitor.watch("idle", sleeper.pid, Limits(procs=256), time.time())
    _sampled(monitor, "idle")
    time.sleep(0.3)
    before = len(monitor.pass_times)
    hold, ended = threading.Event(), threading.Semaphore(0)

    def task() -> None:
        hold.wait(30)
        ended.release()

    for _ in range(300):  # not Thread.start: it waits for each new thread to run, which a loaded box makes slow
        _thread.start_new_thread(task, ())
    hold.set()
    for _ in range(300):
        assert ended.acquire(timeout=30)
    wait_until(lambda: len(monitor.pass_times) > before, timeout=10, what="a pass after the storm")
