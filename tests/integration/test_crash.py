"""Crashes: a runner killed from outside is noticed at once; other sessions carry on."""

from __future__ import annotations

import os
import signal

from tests.conftest import wait_until


def test_kill_9_of_a_runner_marks_it_failed_at_once(client) -> None:
    """SIGKILL to a runner ends its session as failed with the signal as reason, noticed from the exit itself (not
    a heartbeat timeout): within the wait's 5 s deadline. (It used to assert under 1 s, a timing threshold that a
    loaded box missed by 0.03 s; docs/benchmarks.md measures speed, tests do not.)"""
    victim = client.start("demo.sleep", params={"seconds": 60})
    other = client.start("labd_testflows:ticker", params={"n": 40, "delay": 0.05})
    pid = wait_until(lambda: client.session(victim)["status"] == "running" and client.session(victim)["pid"])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: client.session(victim)["status"] == "failed", timeout=5, interval=0.01)
    final = client.session(victim)
    assert final["reason"] == "runner killed by SIGKILL" and final["signal"] == 9
    assert client.wait(other, timeout=30)["status"] == "completed"
    ticks = [e for e in client.history(other) if e["kind"] == "custom"]
    assert [t["payload"]["data"]["i"] for t in ticks] == list(range(40))
