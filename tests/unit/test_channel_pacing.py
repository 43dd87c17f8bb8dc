"""Urgent events: the first of a burst leave at once, a flood is paced; the channel's connect path stays light.

Found by time stamps along a session's start (docs/benchmarks.md §22): a step's ``step.started`` and the print
right after it were two messages 0.1 ms apart, and the print waited out a fixed 2 ms gap after the first; and
the channel thread's first connect event imported ``zmq.utils.monitor`` (and with it ``zmq.asyncio``), 2-4 ms
on the channel thread between a runner's first events and their send.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import zmq

from labd.runner.channel import Channel
from labd.runner.channel_wire import _monitor_event
from labd.runner.pacing import BULK_DELAY_S, URGENT_BURST, URGENT_GAP_S, Pacer
from tests.unit.test_channel import KEY, SID, FakeDaemon


def test_the_first_urgent_messages_of_a_burst_leave_at_once_then_one_per_gap() -> None:
    """URGENT_BURST urgent messages in a row may leave at once (no wait for the second: a step's start, then its
    first print); the next is due one gap later; after a quiet spell the allowance is back. A flood forced out by
    size never makes the next urgent message wait more than one gap."""
    pacer = Pacer()
    now = 1000.0
    for _ in range(URGENT_BURST):
        assert pacer.due(now) == now
        pacer.spent(now)
    assert pacer.due(now) == now + URGENT_GAP_S
    assert pacer.due(now + URGENT_GAP_S / 2) == now + URGENT_GAP_S  # still paced
    assert pacer.due(now + URGENT_GAP_S) == now + URGENT_GAP_S  # its turn
    pacer.spent(now + URGENT_GAP_S)
    later = now + URGENT_GAP_S * (URGENT_BURST + 1)  # quiet long enough to refill the allowance
    for _ in range(URGENT_BURST):
        assert pacer.due(later) == later
        pacer.spent(later)
    for _ in range(50):  # a flood sent by size: the bucket is empty, not in debt
        pacer.spent(later)
    assert pacer.due(later) == later + URGENT_GAP_S


def _queued(ch: Channel, kind: str) -> float:
    """Emit one event and move it to the send queue as the channel thread would; returns its emit time."""
    t = time.monotonic()
    ch.emit(kind, {"stream": "stdout", "text": "x\n"} if kind == "output" else {"name": "x"})
    with ch._lock:  # noqa: SLF001 - the thread's own step, driven by hand (the thread is never started)
        ch._take()  # noqa: SLF001
    return t


def test_the_channel_sends_urgent_events_as_paced_and_bulk_ones_after_their_delay(endpoint: str) -> None:
    """The channel's decision: an urgent event is due when the pacer allows (at once after a quiet spell); a bulk
    event alone waits BULK_DELAY_S for company, whatever the urgent allowance."""
    ch = Channel(endpoint, KEY, SID)
    try:
        t = _queued(ch, "custom")
        assert abs(ch._due_at(t) - (t + BULK_DELAY_S)) < 0.05  # noqa: SLF001 - its emit time + the delay
        assert ch._due_at(t) > t  # noqa: SLF001
        _queued(ch, "output")  # an urgent one behind it: both may leave now
        now = time.monotonic()
        assert ch._due_at(now) == now  # noqa: SLF001
    finally:
        ch.discard()


def test_each_events_message_the_channel_sends_spends_from_the_pacer(endpoint: str, daemon: FakeDaemon) -> None:
    """The wiring: every events message ``_flush`` sends is counted by the pacer at its own send time (driven by
    hand on a real socket; the bucket's arithmetic is pinned above)."""
    ch = Channel(endpoint, KEY, SID)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    try:
        for n in range(1, URGENT_BURST + 1):
            _queued(ch, "output")
            sent, blocked = ch._flush(sock, time.monotonic())  # noqa: SLF001
            assert sent and not blocked and ch.sends == n
            assert ch._pacer._at == ch._last_send  # noqa: SLF001 - spent at the send's own time
        assert [ev[0] for ev in daemon.recv_events(URGENT_BURST, timeout=20)] == list(range(1, URGENT_BURST + 1))
    finally:
        sock.close(0)
        ctx.term()
        ch.discard()


def test_monitor_messages_are_decoded_from_a_real_socket(endpoint: str) -> None:
    """The channel's own decoding of ZeroMQ's monitor messages gives the event a real socket reports on connect;
    a message of any other shape is no event (0)."""
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        router.bind(endpoint)
        dealer = ctx.socket(zmq.DEALER)
        monitor = dealer.get_monitor_socket(zmq.EVENT_CONNECTED)
        dealer.connect(endpoint)
        assert monitor.poll(10_000), "no monitor event within 10 s"
        assert _monitor_event(monitor.recv_multipart()) == zmq.EVENT_CONNECTED
        assert _monitor_event([b"short", b"x"]) == 0
        assert _monitor_event([b"\x00" * 6]) == 0
        dealer.disable_monitor()
        for s in (monitor, dealer, router):
            s.close(0)
    finally:
        ctx.term()


def test_a_connected_channel_has_not_imported_zmq_asyncio(endpoint: str) -> None:
    """A runner's channel connects, says hello and sends without importing ``zmq.asyncio`` (which
    ``zmq.utils.monitor`` pulls in: 2-4 ms on the channel thread of a fresh runner, between its first events and
    their send). Checked in a fresh interpreter, where nothing else imported it first."""
    code = textwrap.dedent(f"""
        import sys, zmq
        from labd.ipc.wire import Codec
        from labd.runner.channel import Channel
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.bind({endpoint!r})
        ch = Channel({endpoint!r}, {KEY!r}, {SID!r})
        ch.start()
        assert ch.connected.wait(20), "not connected"
        ch.emit("output", {{"stream": "stdout", "text": "hi"}})
        codec = Codec({KEY!r})
        types = set()
        while "events" not in types:
            assert router.poll(20_000), "nothing received"
            types.add(codec.unpack(router.recv_multipart()[1:]).type)
        print("hello" in types, "zmq.asyncio" in sys.modules, "zmq.utils.monitor" in sys.modules, flush=True)
        ch.discard = lambda: None
        router.close(0)
        import os
        os._exit(0)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "False"]
