"""Limits: memory kill, CPU throttling, wall-time timeout, and the stop ladder."""

from __future__ import annotations

import time

import psutil
import pytest

from tests.conftest import wait_until


def test_memory_hog_is_killed_with_the_reason_recorded(client) -> None:
    """A session whose process tree exceeds its memory limit is killed; the reason names measure and limit."""
    bystander = client.start("demo.sleep", params={"seconds": 30})
    sid = client.start("labd_testflows:memory_hog", params={"mb": 800}, memory="150M")
    final = client.wait(sid, timeout=60)
    assert final["status"] == "failed"
    assert final["reason"].startswith("killed: memory ") and final["reason"].endswith("> limit 150 MiB")
    assert final["ended_by"] == "sigkill" and final["signal"] == 9
    breach = [e for e in client.history(sid) if e["kind"] == "limit.exceeded"][0]["payload"]
    assert breach["limit"] == "memory" and breach["measured"] > breach["max"] == 150 * 2**20
    assert final["peak_rss"] > 150 * 2**20
    assert client.session(bystander)["status"] == "running"  # nothing else disturbed
    client.stop(bystander, grace=1)


def test_cpu_hog_is_held_to_its_quota(client) -> None:
    """A busy loop limited to 30 % of a core gets 30 % (+-15 % of the quota) over a few seconds."""
    sid = client.start("labd_testflows:cpu_hog", params={"seconds": 30}, cpu="30%")
    pid = wait_until(lambda: client.session(sid)["pid"], what="runner pid")
    proc = psutil.Process(pid)
    wait_until(lambda: client.session(sid)["status"] == "running", what="running")
    c0 = sum(proc.cpu_times()[:2])
    start = time.monotonic()
    wait_until(lambda: time.monotonic() - start > 4.0, timeout=10, interval=0.2, what="measurement window")
    c1 = sum(proc.cpu_times()[:2])
    share = (c1 - c0) / (time.monotonic() - start) * 100
    client.kill(sid)
    assert 30 * 0.85 <= share <= 30 * 1.15, f"cpu share {share:.1f}% outside 30% +-15%"


def test_timeout_ends_a_session(client) -> None:
    """A session over its wall-time limit is stopped through the ladder and marked failed with the reason."""
    sid = client.start("demo.sleep", params={"seconds": 60}, timeout=1.0)
    final = client.wait(sid, timeout=30)
    assert final["status"] == "failed"
    assert final["reason"].startswith("stopped: wall time") and final["reason"].endswith("> limit 1 s")
    assert final["ended_by"] == "cooperative"


@pytest.mark.parametrize(("workflow", "expected_step"), [
    ("demo.sleep", "cooperative"),
    ("labd_testflows:stubborn", "sigkill"),
])
def test_stop_ladder_records_the_step_that_ended_the_session(client, workflow, expected_step) -> None:
    """Stop asks politely first; a workflow that ignores both the request and SIGTERM is SIGKILLed."""
    sid = client.start(workflow)
    wait_until(lambda: any(e["kind"] == "output" for e in client.history(sid)), what="workflow output")
    client.stop(sid, grace=0.5)
    final = client.wait(sid, timeout=30)
    assert final["status"] == "cancelled"
    assert final["ended_by"] == expected_step
    assert f"ended by {expected_step}" in final["reason"]
