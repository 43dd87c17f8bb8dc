"""Acks paced per session (daemon/acks.py): frames within the interval share one ack, a runner that needs an ack
(closing, a full backlog) gets it at once, and a session's end never waits for the interval."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from labd.ipc.wire import Codec, encode_json
from tests.conftest import DaemonProc, kill_runners, wait_until
from tests.integration.impostor import impostor_runner

INTERVAL_S = 30.0  # far longer than any wait below: an ack that arrives was not paced


@pytest.fixture
def slow_acks(isolated_env: Path) -> Iterator[DaemonProc]:
    """A daemon that acks each runner at most every 30 s unless the runner asks."""
    d = DaemonProc(isolated_env, extra_env={"LABD_ACK_INTERVAL_S": str(INTERVAL_S)}).start()
    try:
        yield d
    finally:
        d.stop()
        kill_runners(isolated_env)


def _frame(codec: Codec, sid: str, src_seq: int, text: str, *, ack: bool = False) -> list[bytes]:
    ev = [src_seq, time.time(), "custom", None, None, {"name": text}]
    return codec.pack_events(sid, [encode_json(ev)], ack=ack)


def _ack(codec: Codec, s: zmq.Socket, wait_ms: int) -> int | None:
    """The next ack's ``next``, or None if none came within ``wait_ms``."""
    if not s.poll(wait_ms):
        return None
    msg = codec.unpack(s.recv_multipart())
    assert msg.type == "ack"
    return int(msg.body["next"])


def _stored(c: Any, sid: str) -> int:
    return max(e["src_seq"] for e in c.history(sid) if e["src"] == "runner")


def test_frames_within_the_interval_share_one_ack_and_a_frame_that_asks_is_acked_at_once(slow_acks) -> None:
    """Frames committed one by one within the interval get no ack of their own (the session's runner got one
    before); a frame with ``"ack": true`` is acked at once, and its ack covers them all. An empty frame that asks
    (what a closing runner sends when everything is already sent) is acked too."""
    with slow_acks.client() as c:
        sid, codec, s = impostor_runner(c)
        nxt = _stored(c, sid) + 1
        s.send_multipart(_frame(codec, sid, nxt, "first", ack=True))
        assert _ack(codec, s, 10_000) == nxt + 1
        for i in range(1, 4):  # each committed before the next is sent: one ingest batch each
            s.send_multipart(_frame(codec, sid, nxt + i, f"paced {i}"))
            wait_until(lambda i=i: _stored(c, sid) == nxt + i, timeout=20, what="the frame to be committed")
        assert _ack(codec, s, 1000) is None  # owed, not sent: the interval is 30 s
        s.send_multipart(_frame(codec, sid, nxt + 4, "asks", ack=True))
        assert _ack(codec, s, 10_000) == nxt + 5
        asked = c.status()["counters"]["acks.asked"]
        s.send_multipart(codec.pack_events(sid, [], ack=True))
        assert _ack(codec, s, 10_000) == nxt + 5
        assert c.status()["counters"]["acks.asked"] == asked + 1
        names = [e["payload"]["name"] for e in c.history(sid, kinds=["custom"])]
        assert names[-5:] == ["first", "paced 1", "paced 2", "paced 3", "asks"]
        s.close(0)


def test_a_session_ends_at_once_although_acks_are_paced(slow_acks) -> None:
    """A runner's end waits for every event to be acknowledged (its spool is removed only then): it asks for the
    ack, so a session that emits a burst and returns ends without waiting for the 30 s interval, completed, with
    every event stored once and in order."""
    with slow_acks.client() as c:
        before = c.status()["counters"].get("acks.asked", 0)
        t0 = time.monotonic()
        sid = c.start("demo.events", params={"n": 2000})
        final = c.wait(sid, timeout=60)
        took = time.monotonic() - t0
        assert final["status"] == "completed"
        # waiting for the paced ack (or giving up on it: the runner's 30 s flush timeout) takes >= 30 s; the rest
        # of a start and 2,000 events well under 24 s, even on a loaded box
        assert took < INTERVAL_S * 0.8, f"the end waited for the paced ack ({took:.1f} s)"
        assert c.status()["counters"].get("acks.asked", 0) > before
        runner = [e["src_seq"] for e in c.history(sid) if e["src"] == "runner"]
        assert runner == list(range(1, len(runner) + 1))
        assert sum(1 for e in c.history(sid, kinds=["custom"])) >= 2000
