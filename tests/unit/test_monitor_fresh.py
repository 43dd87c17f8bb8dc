"""A newly watched session is sampled soon, but not while its runner starts (daemon/monitor.py, FRESH_DELAY_S):
the process-table pass a launch used to trigger at once competed with the runner for the CPU."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from labd.daemon.limits import Limits
from labd.daemon.monitor import FRESH_DELAY_S
from tests.conftest import wait_until
from tests.support.monitor_rig import TimedMonitor, running_monitor


@pytest.fixture
def monitor() -> Iterator[TimedMonitor]:
    with running_monitor() as m:
        yield m


def test_a_new_session_is_first_sampled_after_its_start_window(monitor: TimedMonitor) -> None:
    """After a watch begins, the next pass comes no earlier than FRESH_DELAY_S later, and it does come (long
    before the 60 s sampling period): the session gets its first sample, with its peak memory."""
    wait_until(lambda: monitor.pass_times, timeout=30, what="the monitor's first pass")
    # well past the minimum gap between passes (limit_interval): only the fresh delay can hold the next one back
    wait_until(lambda: time.monotonic() > monitor.pass_times[-1] + 3 * monitor.limit_interval, timeout=30,
               what="the minimum gap between passes to pass")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        before = len(monitor.pass_times)
        watched_at = time.monotonic()
        monitor.watch("s1", child.pid, Limits(), time.time())
        wait_until(lambda: len(monitor.pass_times) > before, timeout=30, what="a pass for the new session")
        assert monitor.pass_times[before] >= watched_at + FRESH_DELAY_S
        wait_until(lambda: (monitor.snapshot_of("s1") or {}).get("peak_rss"), timeout=30, what="its sample")
    finally:
        child.kill()
        child.wait()
