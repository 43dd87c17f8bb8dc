"""A session's code cannot make the daemon the kernel's first out-of-memory victim (daemon/oom_guard.py)."""

from __future__ import annotations

from pathlib import Path

_FLOW = """\
import time


def raise_score(ctx, pid: int) -> str:
    # what any process of the daemon's user may do: raise another of its processes' OOM score
    with open(f"/proc/{pid}/oom_score_adj", "w") as f:
        f.write("1000")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/oom_score_adj") as f:
            now = f.read().strip()
        if now != "1000":
            return now
        time.sleep(0.05)
    return "1000"
"""


def _score(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def test_a_session_raising_the_daemons_oom_score_has_it_put_back(daemon, tmp_path: Path) -> None:
    """Workflow code writes 1000 into the daemon's ``oom_score_adj`` (allowed to any process of the user: the
    runner's Landlock policy cannot cover /proc entry by entry). At 1000 the kernel's OOM killer would take the
    daemon before the session that exhausted memory (an attack review). The limits monitor puts the daemon's start
    value back within a pass or two, which the session itself sees; the daemon logs it and counts it in
    ``labd status`` (``monitor.oom_score_restored``)."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    start = _score(pid)
    assert start < 1000
    flows = tmp_path / "oomflow.py"
    flows.write_text(_FLOW)
    with daemon.client() as c:
        sid = c.start(f"{flows}:raise_score", params={"pid": pid})
        row = c.wait(sid, timeout=90)
        assert row["status"] == "completed", row.get("reason")
        finished = next(c.history(sid, kinds=["session.finished"]))["payload"]
        assert finished["result"] == str(start), finished  # put back while the session still ran
        assert _score(pid) == start
        assert c.status()["monitor"]["oom_score_restored"] >= 1
    assert "the daemon's OOM score was raised" in daemon.log()
