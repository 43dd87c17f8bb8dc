"""Resumable clients: history from the store, then the live tail, each event exactly once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import wait_until
from tests.support.procmem import memory_mb


def test_client_that_disconnects_and_resumes_gets_every_event_once(daemon) -> None:
    """A follower reads part of a live session, disconnects, resumes later from its last seq, and ends up
    with exactly the stored history: no gap, no duplicate."""
    with daemon.client() as c:
        sid = c.start("labd_testflows:ticker", params={"n": 60, "delay": 0.02})
    seen: list[int] = []
    with daemon.client() as first:
        for ev in first.follow(sid, timeout=60):
            seen.append(ev["seq"])
            if len(seen) == 25:
                break  # disconnect mid-stream
    with daemon.client() as second:
        for ev in second.follow(sid, since=seen[-1], timeout=60):
            seen.append(ev["seq"])
        stored = [e["seq"] for e in second.history(sid)]
    assert seen == stored == list(range(1, len(stored) + 1))
    assert len(stored) > 60 * 4


def test_follow_through_an_output_burst_loses_nothing(daemon) -> None:
    """Under a burst (the live PUB tail may drop), follow fills gaps from the store: every line arrives once."""
    lines = 200_000
    with daemon.client() as c:
        sid = c.start("labd_testflows:flood", params={"lines": lines})
        seqs, text = [], []
        for ev in c.follow(sid, timeout=120):
            seqs.append(ev["seq"])
            if ev["kind"] == "output":
                text.append(ev["payload"]["text"])
        assert seqs == list(range(1, len(seqs) + 1))
        out = "".join(text).splitlines()
        assert out == [f"L{i}" for i in range(lines)]


def test_follow_of_a_finished_session_returns_its_history_and_stops(daemon) -> None:
    """Following an ended session replays it from the store and returns."""
    with daemon.client() as c:
        sid = c.start("demo.count", params={"n": 2, "delay": 0})
        c.wait(sid, timeout=30)
        evs = list(c.follow(sid, timeout=10))
        assert evs[-1]["kind"] == "session.ended"
        assert [e["seq"] for e in evs] == [e["seq"] for e in c.history(sid)]


_STALLED_FOLLOWER = r'''
import sys, time
from pathlib import Path
from labd.ipc import Client

home, sid, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
with Client(home, timeout=60) as c:
    it = iter(c.follow(sid, timeout=300))
    evs = [next(it)]
    print("following", flush=True)
    while not go.exists():  # the caller stopped iterating: the generator is suspended, its socket still receives
        time.sleep(0.05)
    evs += list(it)
seqs = [ev["seq"] for ev in evs]
print("gap-free" if seqs == list(range(1, len(seqs) + 1)) else "GAP", len(seqs), evs[-1]["kind"], flush=True)
'''


@pytest.mark.timeout(300)
def test_a_follower_that_stops_iterating_holds_bounded_memory_and_then_gets_every_event(daemon, tmp_path) -> None:
    """An SDK ``follow`` whose caller stops iterating (the generator suspended, its SUB socket still receiving) while
    the session prints ~120 MB holds a bounded number of the live tail's messages (its socket's high-water mark,
    ``labd.ipc.live.LIVE_RCVHWM``) instead of queueing all of them: it was 100,000 messages, and the caller's
    process grew by about what the session printed. Once it iterates again it gets every event once and in order
    (the dropped ones read from the store) through ``session.ended``."""
    with daemon.client() as c:
        sid = c.start("labd_testflows:ticker", params={"n": 1, "delay": 0.0})
        c.wait(sid, timeout=60)  # warm: the first session's start-up is not what is measured
        sid = c.start("demo.chatty", params={"lines": 600_000, "width": 200})
    go = tmp_path / "go"
    script = tmp_path / "follower.py"
    script.write_text(_STALLED_FOLLOWER)
    proc = subprocess.Popen([sys.executable, str(script), str(daemon.home), sid, str(go)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "following"
        before = memory_mb(proc.pid)
        peak = [before]

        def ended() -> bool:  # and the follower's memory meanwhile, while it reads nothing
            peak[0] = max(peak[0], memory_mb(proc.pid))
            with daemon.client() as c:
                return c.session(sid)["status"] in ("completed", "failed", "cancelled", "lost")

        wait_until(ended, timeout=180, interval=0.25, what="the session's end")
        peak[0] = max(peak[0], memory_mb(proc.pid))
        go.touch()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    with daemon.client() as c:
        total = c.session(sid)["last_seq"]
    assert out.split() == ["gap-free", str(total), "session.ended"], out
    assert peak[0] - before < 60, f"the follower grew from {before} to {peak[0]} MB while it did not iterate"
