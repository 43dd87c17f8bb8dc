"""The session's output cap charged inside :meth:`Channel.emit` with the bytes it encoded (a workflow's log records
and custom events): what fits is recorded gap-free, what does not is dropped, and the first drop is reported once,
through the same channel, without deadlocking it."""

from __future__ import annotations

import threading
from typing import Any

import orjson

from labd.runner.channel import Channel
from labd.runner.outputcap import OutputCap
from tests.unit.test_channel import KEY, SID, FakeDaemon


def _started(endpoint: str, daemon: FakeDaemon) -> Channel:
    ch = Channel(endpoint, KEY, SID, hello=lambda: {"pid": 4242})
    ch.start()
    daemon.recv("hello")
    return ch


def test_capped_emits_past_the_cap_are_dropped_and_the_sequence_stays_unbroken(
        endpoint: str, daemon: FakeDaemon, channels: list[Channel]) -> None:
    """Capped events are kept while their encoded bytes fit (counted as sent: the events the daemon received fill
    the cap but for less than one more), later ones return -1 and never reach the daemon, the first drop is reported
    once as an uncapped event (``output.truncated``), and uncapped events go on with the next ``src_seq``."""
    reports: list[dict[str, Any]] = []
    ch = _started(endpoint, daemon)
    channels.append(ch)

    def truncated(report: dict[str, Any]) -> None:  # what the runner does: an emit, from inside the emit that dropped
        reports.append(report)
        ch.emit("output.truncated", {**report, "by": "runner"})

    cap = OutputCap(1000, truncated)
    seqs = [ch.emit("custom", {"name": "n", "data": "x" * 100}, cap=cap) for _ in range(20)]
    kept = [s for s in seqs if s > 0]
    assert kept == list(range(1, len(kept) + 1)) and 5 <= len(kept) < 10  # ~140 bytes each, 1000 in all
    assert seqs[len(kept):] == [-1] * (20 - len(kept))
    assert reports == [{"cap": 1000}]  # once, at the first drop
    after = ch.emit("step.started", {"name": "s"}, "n1")  # labd's own events are never capped
    assert after == len(kept) + 2  # the report took the seq after the kept ones
    events = daemon.recv_events(after)
    assert [e[0] for e in events] == list(range(1, after + 1))
    assert [e[2] for e in events] == ["custom"] * len(kept) + ["output.truncated", "step.started"]
    sizes = [len(orjson.dumps(e)) for e in events[:len(kept)]]  # as encoded and sent
    assert sum(sizes) <= 1000 < sum(sizes) + sizes[-1]  # the next one (as large) did not fit
    assert cap.dropped > 0 and set(cap.kinds) == {"custom"}


def test_many_threads_past_the_cap_report_the_first_drop_once(
        endpoint: str, daemon: FakeDaemon, channels: list[Channel]) -> None:
    """Eight threads emitting capped log records past the cap at once: no deadlock (the report is an emit made
    after the channel's lock is released), exactly one first-drop report, and the kept events are contiguous."""
    ch = _started(endpoint, daemon)
    channels.append(ch)
    reports: list[dict[str, Any]] = []
    cap = OutputCap(20_000, lambda r: (reports.append(r), ch.emit("output.truncated", r)))
    got: list[list[int]] = []

    def work() -> None:
        got.append([ch.emit("log", {"level": "info", "event": "y" * 200}, cap=cap) for _ in range(100)])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    assert len(reports) == 1
    kept = sorted(s for seqs in got for s in seqs if s > 0)
    assert 50 <= len(kept) < 100 and ch.last_seq == len(kept) + 1
    assert len(set(kept)) == len(kept) and max(kept) <= ch.last_seq  # each seq once; the report took the one left
