"""A real limits monitor (daemon/monitor.py) on its own thread, with no regular pass during a test (a 60 s sampling
period), that notes when each process-table pass begins and counts its full ticks: for tests of when it looks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import zmq

from labd.daemon.monitor import Monitor


class TimedMonitor(Monitor):
    """A real monitor that notes its passes (``pass_times``) and counts its full ticks (``full_ticks``: each reads
    the wall-time limits; a quiet tick does not)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.full_ticks = 0
        self.pass_times: list[float] = []

    def _timeouts(self, watched: Any) -> None:
        self.full_ticks += 1
        super()._timeouts(watched)

    def _pass(self, watched: Any, now: float, record: bool) -> None:
        self.pass_times.append(time.monotonic())
        super()._pass(watched, now, record)


@contextmanager
def running_monitor() -> Iterator[TimedMonitor]:
    """A started :class:`TimedMonitor`, stopped and joined afterwards."""
    ctx = zmq.Context()
    m = TimedMonitor(ctx, sample_interval=60.0, record_interval=60.0)
    m.start()
    try:
        yield m
    finally:
        m.stop()
        m.join(10)
        ctx.term()
