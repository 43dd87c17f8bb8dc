"""Reading a page of events holds about the page, not every row the page's ``limit`` allows: ``events_page`` read all
``limit`` rows (up to 5,000) into memory before cutting the page at its bytes, so a session of large custom events
made one ``events.query`` hold hundreds of megabytes in the daemon (a workflow's events can be megabytes each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.procmem import memory_mb, reset_peak

_BIG_FLOW = """\
def big(ctx, n: int = 400, size: int = 256_000):
    for i in range(n):
        ctx.emit("blob", f"{i:06d}" + "x" * size)
"""


@pytest.mark.timeout(300)
def test_a_page_of_large_events_is_read_no_further_than_its_bytes(daemon, tmp_path: Path) -> None:
    """A session records 400 custom events of 256 KB (~100 MB). A page asked with the largest ``limit`` is cut at
    the daemon's page bytes (8 MiB) and says ``more``; reading it raises the daemon's peak memory by a bounded
    amount (it read every row first: ~+100 MB and more), and paging on still returns every event once, in order."""
    (tmp_path / "big_flow.py").write_text(_BIG_FLOW)
    with daemon.client() as c:
        sid = c.start(f"{tmp_path / 'big_flow.py'}:big")
        assert c.wait(sid, timeout=120)["status"] == "completed"
        pid = c.status()["pid"]
        c.events(sid, limit=1)  # warm: the read path's own first-use allocations are not what is measured
        reset_peak(pid)
        before = memory_mb(pid, "VmHWM")
        page = c.events(sid, limit=5000, kinds=["custom"])
        grew = memory_mb(pid, "VmHWM") - before
        assert page["more"] and 20 <= len(page["events"]) <= 40, len(page["events"])
        assert grew < 60, f"one page raised the daemon's peak memory by {grew} MB"
        seen, since = [], 0
        while True:
            p = c.events(sid, since=since, limit=5000, kinds=["custom"])
            seen += [ev["payload"]["data"][:6] for ev in p["events"]]
            if not p["more"] or not p["events"]:
                break
            since = p["events"][-1]["seq"]
    assert seen == [f"{i:06d}" for i in range(400)]
