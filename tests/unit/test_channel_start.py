"""``Channel.start()`` hands the connection to the channel thread (runner/channel.py): the caller goes on at
once, events emitted before and after it are delivered, and a channel that cannot connect at all says so
without raising into the runner, keeping its events in the spool."""

from __future__ import annotations

from pathlib import Path

import zmq

from labd.ipc.wire import Codec
from labd.runner.channel import Channel
from labd.runner.spool import read_spool
from tests.conftest import wait_until

KEY = b"k" * 32


def test_events_emitted_around_start_reach_the_daemon_side(tmp_path: Path) -> None:
    """One event before start() and one after: both arrive (in order) at a ROUTER bound later than the start."""
    endpoint = f"ipc://{tmp_path}/r.sock"
    ch = Channel(endpoint, KEY, "s1", spool=tmp_path / "events.spool")
    ch.emit("session.started", {"pid": 1})
    ch.start()
    ch.emit("output", {"stream": "stdout", "text": "hi\n"})
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    codec = Codec(KEY)
    kinds: list[str] = []
    try:
        def got_both() -> bool:
            while router.poll(100):
                msg = codec.unpack(router.recv_multipart()[1:])
                if msg.type == "events":
                    kinds.extend(ev[2] for ev in msg.body["events"])
            return kinds[:2] == ["session.started", "output"]

        wait_until(got_both, timeout=30, what="both events")
        assert ch.connect_error is None
    finally:
        ch.close(timeout=0.1)
        router.close(0)
        ctx.term()


def test_a_channel_that_cannot_connect_reports_it_and_keeps_its_events(tmp_path: Path) -> None:
    """A malformed endpoint: start() does not raise, ``connect_error`` names the failure, and emitted events
    are in the spool for the daemon to read after the runner ends."""
    ch = Channel("nonsense://x", KEY, "s1", spool=tmp_path / "events.spool")
    ch.start()
    wait_until(lambda: ch.connect_error, timeout=30, what="the channel thread's failure")
    ch.emit("output", {"stream": "stdout", "text": "kept\n"})
    ch.close(timeout=0.1)
    assert [seq for seq, _ in read_spool(tmp_path / "events.spool")] == [1]
