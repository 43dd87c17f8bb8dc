"""The tracking hot path's hand-offs: bulk emits in a busy stretch wake nothing, urgent ones still leave at once,
and a runner killed in the middle of writing a record leaves every record before it readable.

A fake daemon (a ROUTER socket in the test) receives and acknowledges; the channel and the spool are the real
ones.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from labd.runner.channel import Channel
from labd.runner.pacing import BULK_DELAY_S
from labd.runner.spool import read_spool
from tests.conftest import wait_until
from tests.unit.test_channel import FakeDaemon, _channel
from tests.unit.test_channel_speed import BOUND_S, Receiver


def _sent_once(ch: Channel, rx: Receiver) -> int:
    """One bulk event sent and received: from now on the channel thread ticks armed (it sent lately)."""
    first = ch.emit("llm.request", {"n": 0})
    wait_until(lambda: first in rx.arrived, timeout=10)
    return first


def test_bulk_emits_after_a_send_wake_nothing_and_still_leave_within_the_bulk_delay(
        endpoint: str, daemon: FakeDaemon, channels: list[Channel], tmp_path: Path) -> None:
    """A workflow emitting tracking events steadily: once the channel has sent, no bulk emit asks the channel
    thread to wake (it ticks armed every bulk delay and takes them then), and every event still reaches the
    daemon promptly. Before, the first bulk emit after each send woke the thread."""
    ch = _channel(endpoint, daemon, spool=tmp_path / "events.spool")
    channels.append(ch)
    with Receiver(daemon) as rx:
        _sent_once(ch, rx)
        woke = 0
        emitted: dict[int, float] = {}
        for i in range(1, 41):  # ~0.4 s of a busy agent: several sends and acks in between
            seq = ch.emit("llm.response", {"n": i})
            emitted[seq] = time.monotonic()
            woke += ch._wake_pending  # noqa: SLF001 - set by emit exactly when it decides to wake the thread
            time.sleep(0.01)
        wait_until(lambda: all(s in rx.arrived for s in emitted), timeout=10)
        assert woke == 0
        late = {s: rx.arrived[s] - t for s, t in emitted.items() if rx.arrived[s] - t > BULK_DELAY_S + BOUND_S}
        assert not late


def test_an_urgent_emit_still_wakes_the_ticking_thread(endpoint: str, daemon: FakeDaemon,
                                                       channels: list[Channel]) -> None:
    """While the thread sleeps out a bulk tick, an urgent event (output) is not held to the tick's end: it
    leaves at once, taking the bulk events before it along."""
    ch = _channel(endpoint, daemon)
    channels.append(ch)
    with Receiver(daemon) as rx:
        first = _sent_once(ch, rx)
        # acked, and the thread asleep armed for a bulk tick with most of it still to run (what the urgent emit
        # must interrupt); it keeps ticking for BULK_TICK_S after its last send
        wait_until(lambda: ch._acked_upto >= first and ch._armed  # noqa: SLF001
                   and ch._armed_until - time.monotonic() > BULK_DELAY_S / 2,  # noqa: SLF001
                   timeout=10, interval=0.002, what="the channel thread ticking armed after the ack")
        tick_end = ch._armed_until  # noqa: SLF001
        bulk = ch.emit("cost.recorded", {"n": 1})
        t0 = time.monotonic()
        urgent = ch.emit("output", {"stream": "stdout", "text": "hi"})
        wait_until(lambda: urgent in rx.arrived, timeout=10)
        assert bulk in rx.arrived and rx.arrived[bulk] <= rx.arrived[urgent]
        assert rx.arrived[urgent] - t0 < BOUND_S
        # not held to the tick's end (which alone is within BOUND_S: the bound above cannot tell)
        assert rx.arrived[urgent] < tick_end, (rx.arrived[urgent] - t0, tick_end - t0)


_CRASH = """
import os, signal, sys
from labd.runner.spool import HEADER, Spool
spool = Spool(sys.argv[1])
for seq in range(1, 201):
    spool.append(seq, b'[%d,0.0,"llm.response",null,null,{"x":"%s"}]' % (seq, b"a" * 300))
# a record cut short by the kill: its header and half its body are in the map
m, start = spool._map, spool.size
body = b'[201,0.0,"llm.response",null,null,{"x":"%s"}]' % (b"b" * 300)
HEADER.pack_into(m, start, len(body), 12345, 201)
m[start + HEADER.size:start + HEADER.size + len(body) // 2] = body[:len(body) // 2]
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_kill_mid_record_loses_nothing_before_it(tmp_path: Path) -> None:
    """A runner SIGKILLed while writing a record (mid-batch: 200 complete ones before it): the daemon's reader
    gets every complete record, in order, and stops at the torn one (its checksum fails)."""
    path = tmp_path / "events.spool"
    proc = subprocess.run([sys.executable, "-c", _CRASH, str(path)], timeout=60, check=False)
    assert proc.returncode == -9
    assert [s for s, _ in read_spool(path)] == list(range(1, 201))
    assert [s for s, _ in read_spool(path, after=150)] == list(range(151, 201))
