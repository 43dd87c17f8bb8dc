"""Resumable clients: history from the store, then the live tail, each event exactly once."""

from __future__ import annotations


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
