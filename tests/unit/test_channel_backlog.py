"""A runner's channel holds a bounded amount of memory while its daemon takes nothing in (its store unwritable): the
events it keeps unacknowledged are bounded in bytes, not only in number, and what ZeroMQ holds of its resends is
bounded too (an admin's review: 30 MB of output during a full disk took the session to 309 MB, counted against its
--memory)."""

from __future__ import annotations

import threading
import time

import pytest

import labd.runner.channel as channel_module
from labd.daemon.inbound import RUNNER_RCVHWM
from labd.runner.channel import Channel
from labd.runner.channel_wire import SEND_QUEUE
from tests.conftest import wait_until
from tests.unit.test_channel import FakeDaemon, _channel

CHUNK = {"stream": "stdout", "text": "x" * (200 << 10)}  # an output event of 200 KiB: one or two to a message


def test_resends_to_a_daemon_that_reads_nothing_do_not_pile_up(endpoint: str, channels: list[Channel],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """40 MB unacknowledged and re-sent every 0.2 s (the resend after a silence) to a daemon that reads nothing: the
    messages ZeroMQ takes stay near its send queue of SEND_QUEUE (and the daemon's receive queue of RUNNER_RCVHWM);
    each resend had copied the whole backlog into new messages, up to 1,000 of them (about 500 MB) in the session's
    memory."""
    monkeypatch.setattr(channel_module, "RESEND_AFTER_S", 0.2)
    daemon = FakeDaemon(endpoint, rcvhwm=RUNNER_RCVHWM)  # as the daemon's runner socket
    try:
        ch = _channel(endpoint, daemon)
        channels.append(ch)
        for _ in range(200):
            ch.emit("output", CHUNK)
        deadline = time.monotonic() + 3.0  # 15 resend periods: the old queue was full within 10
        while time.monotonic() < deadline:
            # SEND_QUEUE, the daemon's RUNNER_RCVHWM and what the kernel's socket buffer takes; the old queue took 1,000
            assert ch.sends <= 160, ch.sends
            time.sleep(0.05)
        assert ch.sends >= SEND_QUEUE // 2  # it did send, up to the queue
    finally:
        daemon.close()


def test_emit_waits_once_the_unacknowledged_events_take_max_unacked_bytes(endpoint: str, daemon: FakeDaemon,
                                                                         channels: list[Channel],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With no spool (a full disk) the unacknowledged events are the only copy, held in memory: emit() waits once
    they take MAX_UNACKED_BYTES (2 MiB here), as it does at max_unacked events, and goes on when the daemon
    acknowledges them; nothing is lost. Before, only their number was bounded: 200,000 output chunks of 64 KiB."""
    monkeypatch.setattr(channel_module, "MAX_UNACKED_BYTES", 2 << 20)
    ch = _channel(endpoint, daemon)
    channels.append(ch)
    done: list[int] = []

    def emit_all() -> None:
        for _ in range(30):
            done.append(ch.emit("output", CHUNK))

    t = threading.Thread(target=emit_all, daemon=True)
    t.start()
    most = (2 << 20) // (200 << 10) + 1  # the emit that reaches the bound is taken; the next one waits
    wait_until(lambda: len(done) >= most - 1, timeout=10, what="emits up to the bound")
    t.join(0.5)
    assert t.is_alive() and len(done) <= most, len(done)
    daemon.recv("events")
    daemon.ack(len(done) + 1)  # all taken so far acknowledged: room again
    wait_until(lambda: len(done) > most, timeout=10, what="emits going on after the ack")
    while t.is_alive():
        daemon.ack(len(done) + 1)
        t.join(0.2)
    assert done == list(range(1, 31))
