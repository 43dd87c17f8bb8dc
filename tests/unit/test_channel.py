"""Unit tests for labd.runner.channel.Channel against an in-test ZeroMQ ROUTER standing in for the daemon."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import zmq

from labd.ipc.wire import Codec, Message
from labd.runner.channel import Channel
from tests.conftest import wait_until

KEY = b"channel-test-key-0123456789abcdef"
SID = "sess-unit-1"


class FakeDaemon:
    """A ROUTER socket that receives the channel's messages and answers with signed acks."""

    def __init__(self, endpoint: str, rcvhwm: int | None = None) -> None:
        self.zctx = zmq.Context()
        self.sock = self.zctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if rcvhwm is not None:  # before the bind: a listener gives its connections the options it had then
            self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.bind(endpoint)
        self.codec = Codec(KEY)
        self.identity = b""

    def recv(self, type_: str, timeout: float = 5.0) -> Message:
        """The next message of ``type_`` (others, like heartbeats, are skipped); fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {type_!r} message within {timeout}s")
            if not self.sock.poll(int(left * 1000) + 1):
                continue
            identity, *frames = self.sock.recv_multipart()
            msg = self.codec.unpack(frames)
            self.identity = identity
            if msg.type == type_:
                return msg

    def recv_events(self, upto: int, timeout: float = 5.0) -> list[list[Any]]:
        """Receive 'events' batches until one ending at src_seq ``upto``; returns all events received."""
        got: list[list[Any]] = []
        while not got or got[-1][0] < upto:
            got.extend(self.recv("events", timeout).body["events"])
        return got

    def send(self, type_: str, body: dict[str, Any], codec: Codec | None = None) -> None:
        self.sock.send_multipart([self.identity, *(codec or self.codec).pack(type_, body)])

    def ack(self, nxt: int, resend: bool = False) -> None:
        self.send("ack", {"next": nxt, "resend": resend})

    def close(self) -> None:
        self.sock.close(0)
        self.zctx.term()


def _channel(endpoint: str, daemon: FakeDaemon, **kw: Any) -> Channel:
    """A started channel whose hello the daemon has received (so the connect-time resend is behind us)."""
    ch = Channel(endpoint, KEY, SID, hello=lambda: {"pid": 4242}, **kw)
    ch.start()
    hello = daemon.recv("hello")
    assert hello.body == {"session": SID, "last_seq": 0, "pid": 4242}
    return ch


def test_hello_events_and_ack(endpoint: str, daemon: FakeDaemon, channels: list[Channel]) -> None:
    """The channel says hello, sends emitted events in src_seq order, and close() succeeds once all are acked."""
    ch = _channel(endpoint, daemon)
    channels.append(ch)
    seqs = [ch.emit("output", {"stream": "stdout", "text": f"line {i}\n"}, "n1") for i in range(3)]
    assert seqs == [1, 2, 3] and ch.last_seq == 3
    events = daemon.recv_events(3)
    assert [e[0] for e in events] == [1, 2, 3]
    src_seq, ts, kind, node, parent, payload = events[1]
    assert (kind, node, parent, payload) == ("output", "n1", None, {"stream": "stdout", "text": "line 1\n"})
    assert abs(ts - time.time()) < 60
    daemon.ack(4)
    t0 = time.monotonic()
    assert ch.close(timeout=5.0) is True
    assert time.monotonic() - t0 < 4


def test_close_reports_unacknowledged_events(endpoint: str, daemon: FakeDaemon, channels: list[Channel]) -> None:
    """close() returns False when the daemon has not acknowledged everything by the timeout."""
    ch = _channel(endpoint, daemon)
    channels.append(ch)
    ch.emit("custom", {"name": "x"})
    daemon.recv_events(1)
    assert ch.close(timeout=0.2) is False


def test_resend_on_request(endpoint: str, daemon: FakeDaemon, channels: list[Channel]) -> None:
    """An ack with resend=True makes the channel send every still-unacknowledged event again."""
    ch = _channel(endpoint, daemon)
    channels.append(ch)
    for i in range(3):
        ch.emit("custom", {"name": "e", "data": i})
    assert [e[0] for e in daemon.recv_events(3)] == [1, 2, 3]
    daemon.ack(2, resend=True)  # 1 is committed; 2 and 3 were "lost"
    again = daemon.recv_events(3)
    assert [e[0] for e in again] == [2, 3]
    assert [e[5]["data"] for e in again] == [1, 2]
    daemon.ack(4)
    assert ch.close(timeout=5.0) is True


def test_emit_blocks_at_max_unacked_until_acked(endpoint: str, daemon: FakeDaemon, channels: list[Channel]) -> None:
    """With max_unacked=3 the 4th emit blocks (back-pressure, no loss) until an ack frees room."""
    ch = _channel(endpoint, daemon, max_unacked=3)
    channels.append(ch)
    for i in range(3):
        ch.emit("custom", {"name": "e", "data": i})
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(ch.emit("custom", {"name": "e", "data": 3})), daemon=True)
    t.start()
    assert [e[0] for e in daemon.recv_events(3)] == [1, 2, 3]
    t.join(0.3)
    assert t.is_alive() and result == [], "emit did not block with 3 unacknowledged events"
    daemon.ack(4)
    wait_until(lambda: result, timeout=5, what="blocked emit to return")
    assert result == [4]
    assert [e[0] for e in daemon.recv_events(4)] == [4]
    daemon.ack(5)
    assert ch.close(timeout=5.0) is True


def test_forged_ack_is_ignored(endpoint: str, daemon: FakeDaemon, channels: list[Channel]) -> None:
    """An ack signed with another key does not acknowledge anything; a genuine one sent after it does."""
    ch = _channel(endpoint, daemon)
    channels.append(ch)
    for _ in range(3):
        ch.emit("custom", {"name": "e"})
    daemon.recv_events(3)
    daemon.send("ack", {"next": 4}, codec=Codec(b"another-key-0123456789"))
    daemon.ack(2)  # same connection, so processed after the forged one
    wait_until(lambda: ch._acked_upto >= 1, timeout=5, what="genuine ack")
    assert ch._acked_upto == 1  # private, but it is exactly what an ack changes


def test_cancel_message_reaches_its_handler(endpoint: str, daemon: FakeDaemon, channels: list[Channel]) -> None:
    """A "cancel" message from the daemon calls the registered cancel handler with its body."""
    ch = Channel(endpoint, KEY, SID)
    got: list[dict[str, Any]] = []
    ch.handlers["cancel"] = got.append
    ch.start()
    channels.append(ch)
    daemon.recv("hello")  # the daemon learns the runner's routing id from it
    daemon.send("cancel", {"reason": "stop requested by user"})
    wait_until(lambda: got, timeout=5, what="cancel handler")
    assert got == [{"reason": "stop requested by user"}]


def test_unencodable_payload_does_not_kill_the_channel(endpoint: str, daemon: FakeDaemon,
                                                       channels: list[Channel]) -> None:
    """An event whose payload JSON cannot carry (an int over 64 bits) does not stop later events from
    being delivered (the channel thread must survive it)."""
    ch = _channel(endpoint, daemon)
    channels.append(ch)
    ch.emit("custom", {"name": "big", "data": 2**70})
    ch.emit("custom", {"name": "after"})
    events = daemon.recv_events(2, timeout=2.0)
    assert [e[5]["name"] for e in events] == ["big", "after"]


def test_sparse_events_do_not_wait_for_the_heartbeat(endpoint: str, daemon: FakeDaemon, channels: list[Channel],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An event emitted just after the channel thread went back to its long (heartbeat) poll still wakes it.

    The heartbeat poll is made 60 s long: an event that waited for it would miss the 10 s deadline. (Sparse
    events used to reach clients in heartbeat-sized bursts: an event emitted within the linger time of the
    previous wake-up did not wake the thread.)"""
    import labd.runner.channel as channel_module

    monkeypatch.setattr(channel_module, "HEARTBEAT_S", 60.0)
    ch = _channel(endpoint, daemon)
    channels.append(ch)
    for i in range(1, 11):
        ch.emit("custom", {"name": "sparse", "data": i})
        assert daemon.recv_events(i, timeout=10.0)[-1][0] == i


def test_stalled_acks_are_noticed_without_waiting_for_the_heartbeat(
        endpoint: str, daemon: FakeDaemon, channels: list[Channel], monkeypatch: pytest.MonkeyPatch) -> None:
    """Events the daemon never acknowledges are sent again after RESEND_AFTER_S, even though an idle channel
    now sleeps a long heartbeat poll: the thread wakes for the ack deadline while anything is unacknowledged.

    The heartbeat is made 600 s long and the stall limit 0.5 s; a thread that slept through to the heartbeat
    would miss the 20 s deadline."""
    import labd.runner.channel as channel_module

    monkeypatch.setattr(channel_module, "HEARTBEAT_S", 600.0)
    monkeypatch.setattr(channel_module, "RESEND_AFTER_S", 0.5)
    ch = _channel(endpoint, daemon)
    channels.append(ch)
    ch.emit("output", {"stream": "stdout", "text": "x\n"})
    assert [e[0] for e in daemon.recv_events(1)] == [1]
    # no ack: the same event must come again
    assert [e[0] for e in daemon.recv_events(1, timeout=20.0)] == [1]
    daemon.ack(2)
    assert ch.close(timeout=5.0) is True


def test_acks_are_asked_for_when_the_backlog_is_a_quarter_full_and_when_closing(
        endpoint: str, daemon: FakeDaemon, channels: list[Channel]) -> None:
    """The daemon paces acks unless a frame asks (``"ack": true``). The channel asks once a quarter of its
    backlog limit is unacknowledged (well before emit() would block), not before; and when closing with
    everything already sent, it asks with one frame without events, so close() does not wait for the pace."""
    ch = _channel(endpoint, daemon, max_unacked=8)  # a quarter: 2 events
    channels.append(ch)
    ch.emit("output", {"stream": "stdout", "text": "one\n"})
    first = daemon.recv("events")
    assert [e[0] for e in first.body["events"]] == [1] and "ack" not in first.body
    ch.emit("output", {"stream": "stdout", "text": "two\n"})
    second = daemon.recv("events")
    assert [e[0] for e in second.body["events"]] == [2] and second.body.get("ack") is True
    daemon.ack(3)
    wait_until(lambda: ch._acked_upto == 2, timeout=5)  # noqa: SLF001 - the ack taken in
    ch.emit("output", {"stream": "stdout", "text": "three\n"})
    third = daemon.recv("events")
    assert [e[0] for e in third.body["events"]] == [3] and "ack" not in third.body
    closing = threading.Thread(target=ch.close, kwargs={"timeout": 10.0})
    closing.start()
    ask = daemon.recv("events")
    assert ask.body["events"] == [] and ask.body["ack"] is True
    daemon.ack(4)
    closing.join(10)
    assert not closing.is_alive()


def test_close_waits_on_when_no_spool_holds_the_unacknowledged_events(
        endpoint: str, daemon: FakeDaemon, channels: list[Channel], tmp_path: Any,
        capfd: pytest.CaptureFixture[str]) -> None:
    """The spool failed (a full disk: the channel carries on in memory): at close, events the daemon has not yet
    acknowledged exist only in this process, so close waits past its timeout, says so once on stderr, and returns
    True once the daemon (whose store had room again) acknowledges them. It returned False after the timeout and the
    runner exited: a review lost 60 % of a session's output so."""
    import errno

    ch = Channel(endpoint, KEY, SID, hello=lambda: {"pid": 4242}, spool=tmp_path / "s" / "events.spool")
    channels.append(ch)
    ch.start()
    daemon.recv("hello")

    def full(*_a: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    ch._spool.append = full  # type: ignore[union-attr, method-assign]  # the disk fills up now
    ch.emit("output", {"stream": "stdout", "text": "kept only in memory\n"})
    assert ch.spool_error is not None and "No space left" in ch.spool_error
    daemon.recv_events(1)
    result: list[bool] = []
    closer = threading.Thread(target=lambda: result.append(ch.close(timeout=0.2)))
    closer.start()
    said: list[str] = []
    wait_until(lambda: said.append(capfd.readouterr().err) or "not stored yet" in "".join(said), timeout=10,
               what="close to say it waits past its timeout")
    assert closer.is_alive() and result == []
    daemon.ack(ch.last_seq + 1)  # the output, and the channel's own log of the spool's failure
    closer.join(10)
    assert result == [True]
