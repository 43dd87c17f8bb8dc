"""Two speeds on the runner channel, no lost wake-ups, and the durable spool behind it.

A fake daemon (a ROUTER socket in the test) receives and acknowledges; the channel is the real one.
Bounds are generous (the machine is shared): they tell "sent promptly" from "waited for the 1 s
heartbeat", nothing finer.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from labd.ipc.wire import PayloadError
from labd.runner.channel import HEARTBEAT_S, Channel, is_bulk
from labd.runner.spool import read_spool
from tests.unit.test_channel import KEY, SID, FakeDaemon, _channel

BOUND_S = 0.8  # far under the heartbeat (HEARTBEAT_S): an event that waited for it would show (generous: shared box)
PHASES = ("top", "drained", "taken", "flushed", "decided", "polled", "handled")


class Receiver(threading.Thread):
    """Receives events at the fake daemon, records when each src_seq arrived, and acks everything; a context
    manager: running inside the ``with``, stopped after it."""

    def __init__(self, daemon: FakeDaemon, ack: bool = True) -> None:
        super().__init__(daemon=True)
        self.d = daemon
        self.ack = ack
        self.arrived: dict[int, float] = {}
        self.stop = False

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop = True
        self.join(2)

    def run(self) -> None:
        while not self.stop:
            if not self.d.sock.poll(50):
                continue
            identity, *frames = self.d.sock.recv_multipart()
            msg = self.d.codec.unpack(frames)
            self.d.identity = identity
            if msg.type == "events":
                now = time.monotonic()
                for ev in msg.body["events"]:
                    self.arrived.setdefault(ev[0], now)
                if self.ack:
                    self.d.ack(msg.body["events"][-1][0] + 1)


def test_kinds_have_two_speeds() -> None:
    """Output, logs, lifecycle, steps, approvals and rejections are urgent; tracking kinds are bulk."""
    for kind in ("output", "log", "session.started", "session.finished", "step.started", "approval.requested",
                 "event.truncated"):
        assert not is_bulk(kind), kind
    for kind in ("agent.turn.started", "llm.request", "tool.call", "cost.recorded", "file.created", "custom"):
        assert is_bulk(kind), kind


@pytest.mark.parametrize("kind", ["output", "custom"])
def test_an_event_emitted_at_every_phase_of_the_loop_leaves_promptly(endpoint: str, daemon: FakeDaemon,
                                                                    channels: list[Channel], kind: str) -> None:
    """For each phase of the channel thread's loop, another thread emits exactly there (the loop waits
    until that emit has returned); every event reaches the daemon well before the (30 s) heartbeat would
    have carried it. Urgent kinds at once, bulk kinds after their batching delay (BULK_DELAY_S)."""
    ch = _channel(endpoint, daemon)
    channels.append(ch)
    rx = Receiver(daemon, ack=False)  # no acks: nothing but the emit itself may wake the channel thread
    rx.start()
    emitted: dict[int, float] = {}
    todo = [p for p in PHASES for _ in range(3)]  # each phase three times, at different loop states
    lock = threading.Lock()

    def emit_now() -> None:
        seq = ch.emit(kind, {"stream": "stdout", "text": "x\n"} if kind == "output" else {"name": "x"})
        emitted[seq] = time.monotonic()

    def hook(phase: str) -> None:
        with lock:
            if not todo or todo[0] != phase:
                return
            todo.pop(0)
        t = threading.Thread(target=emit_now)  # another thread, exactly at this point of the loop
        t.start()
        t.join()

    ch.phase_hook = hook
    # Kick the loop; then it is driven by our own emits (urgent: the wake pipe; bulk: the deadline).
    ch.emit("custom", {"name": "kick"})
    try:
        from tests.conftest import wait_until

        total = 3 * len(PHASES)
        wait_until(lambda: len(emitted) == total and all(seq in rx.arrived for seq in list(emitted)), timeout=90,
                   what="an event emitted at every phase, received")
    finally:
        ch.phase_hook = None
        rx.stop = True
        rx.join(2)
    delays = {seq: rx.arrived[seq] - t for seq, t in emitted.items()}
    worst = max(delays.values())
    print(f"\n{kind}: {len(delays)} events at {len(PHASES)} phases; emit -> daemon max {worst * 1000:.1f} ms, "
          f"median {sorted(delays.values())[len(delays) // 2] * 1000:.1f} ms")
    assert len(delays) == 3 * len(PHASES)
    assert worst < BOUND_S < HEARTBEAT_S, delays


def test_bulk_events_are_batched_but_urgent_ones_take_them_along(endpoint: str, daemon: FakeDaemon,
                                                               channels: list[Channel],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream of bulk events goes out in a few messages (batched by time), and an urgent event
    emitted after them is not held back by the batching delay: it carries the waiting bulk ones. The delay is
    raised to 5 s here, so an urgent event that waited for it (or bulk events left behind) would show."""
    from labd.runner import pacing

    monkeypatch.setattr(pacing, "BULK_DELAY_S", 5.0)
    ch = _channel(endpoint, daemon)
    channels.append(ch)
    with Receiver(daemon) as rx:
        before = ch.sends
        bulk = [ch.emit("custom", {"name": "tick", "data": i}) for i in range(500)]
        t0 = time.monotonic()
        seq = ch.emit("output", {"stream": "stdout", "text": "now\n"})
        from tests.conftest import wait_until

        wait_until(lambda: seq in rx.arrived, timeout=10, what="urgent event")
        assert rx.arrived[seq] - t0 < BOUND_S
        assert all(rx.arrived.get(b, float("inf")) <= rx.arrived[seq] for b in bulk), "bulk events left behind"
        assert ch.sends - before <= 20, f"{ch.sends - before} messages for 501 events"


def test_emit_writes_a_checksummed_spool_that_is_removed_when_all_is_acked(endpoint: str, daemon: FakeDaemon,
                                                                         tmp_path: Path) -> None:
    """Each event is in the spool when emit returns (readable with its src_seq, as sent); close()
    removes the spool once every event is acknowledged."""
    spool = tmp_path / "sess" / "events.spool"
    ch = Channel(endpoint, KEY, SID, spool=spool)
    ch.start()
    seqs = [ch.emit("output", {"stream": "stdout", "text": f"{i}\n"}) for i in range(5)]
    records = list(read_spool(spool))
    assert [s for s, _ in records] == seqs
    assert orjson.loads(records[2][1])[5] == {"stream": "stdout", "text": "2\n"}
    assert [s for s, _ in read_spool(spool, after=3)] == [4, 5]
    got = daemon.recv_events(5)
    daemon.ack(got[-1][0] + 1)
    assert ch.close(timeout=5) is True
    assert not spool.exists()


def test_unacknowledged_events_stay_in_the_spool(endpoint: str, daemon: FakeDaemon, tmp_path: Path) -> None:
    """When the daemon never acknowledges, close() returns False and the spool keeps every event."""
    spool = tmp_path / "events.spool"
    ch = Channel(endpoint, KEY, SID, spool=spool)
    ch.start()
    for i in range(3):
        ch.emit("custom", {"name": "e", "data": i})
    assert ch.close(timeout=0.3) is False
    assert [s for s, _ in read_spool(spool)] == [1, 2, 3]


def test_a_torn_spool_tail_is_ignored(tmp_path: Path) -> None:
    """A record cut short (a write interrupted by a crash) ends the reading; records before it count."""
    spool = tmp_path / "events.spool"
    ch = Channel("ipc:///nonexistent", KEY, SID, spool=spool)
    for i in range(3):
        ch.emit("custom", {"name": "e", "data": i})
    data = spool.read_bytes()[:ch._spool.size]  # noqa: SLF001 - the records, without the mapped zero tail
    spool.write_bytes(data[:-5])
    assert [s for s, _ in read_spool(spool)] == [1, 2]
    bad = bytearray(data)
    bad[20] ^= 0xFF  # corrupt the first record's body
    spool.write_bytes(bytes(bad))
    assert list(read_spool(spool)) == []


def test_a_payload_nested_too_deeply_is_refused_at_emit(endpoint: str, daemon: FakeDaemon,
                                                      channels: list[Channel]) -> None:
    """A payload nested 300 levels deep raises PayloadError in emit (nothing recorded, no src_seq used),
    and the channel carries on delivering later events."""
    ch = _channel(endpoint, daemon)
    channels.append(ch)
    deep: Any = {}
    for _ in range(300):
        deep = {"a": deep}
    with pytest.raises(PayloadError, match="nested deeper"):
        ch.emit("custom", {"name": "deep", "data": deep})
    assert ch.emit("output", {"stream": "stdout", "text": "after\n"}) == 1
    events = daemon.recv_events(1)
    assert [e[5]["text"] for e in events] == ["after\n"]
