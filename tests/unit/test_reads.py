"""Long store reads on worker threads (daemon/reads.py): results and errors come back on the loop, the number
pending is bounded, and a read that ends after the daemon closed them writes nowhere."""

from __future__ import annotations

import fcntl
import os
import select
import threading
from typing import Any

import pytest

from labd.daemon import reads as reads_mod
from labd.daemon.api.base import ApiError
from labd.daemon.reads import Read, Reads
from tests.conftest import wait_until


def _collect(r: Reads) -> list[tuple[Any, Any, BaseException | None, Any]]:
    got: list[tuple[Any, Any, BaseException | None, Any]] = []
    r.answered(lambda flow, result, error, ctx: got.append((flow, result, error, ctx)))
    return got


def test_a_result_and_an_error_come_back_with_their_flow_and_wake_the_loop() -> None:
    """Each read's result (or its exception) is handed back with the flow and reply context it was submitted with,
    and the wake descriptor becomes readable when one is done (the loop's poll wakes at once)."""
    r = Reads()
    try:
        r.submit(Read(lambda: 41 + 1, "sum"), "flow-a", "ctx-a")
        r.submit(Read(lambda: (_ for _ in ()).throw(ApiError("unknown_node", "no such node")), "seed"),
                 "flow-b", "ctx-b")
        assert len(r) == 2
        got: list[tuple[Any, Any, BaseException | None, Any]] = []

        def both() -> bool:
            if select.select([r.fileno()], [], [], 0)[0]:
                got.extend(_collect(r))
            return len(got) == 2

        wait_until(both, timeout=10, interval=0.01, what="both reads answered")
        by_flow = {g[0]: g for g in got}
        assert by_flow["flow-a"][1:] == (42, None, "ctx-a")
        error = by_flow["flow-b"][2]
        assert isinstance(error, ApiError) and error.code == "unknown_node" and by_flow["flow-b"][3] == "ctx-b"
        assert len(r) == 0
    finally:
        r.close()


def test_past_the_bound_a_read_is_refused_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most MAX_PENDING reads run or wait; one more is refused with ``busy`` at once (its client retries)
    instead of queueing without bound in the daemon's memory."""
    monkeypatch.setattr(reads_mod, "MAX_PENDING", 3)
    gate = threading.Event()
    r = Reads()
    try:
        for i in range(3):
            r.submit(Read(gate.wait, "held"), f"flow-{i}", None)
        with pytest.raises(ApiError) as err:
            r.submit(Read(lambda: None, "one more"), "flow-x", None)
        assert err.value.code == "busy" and err.value.details == {"pending": 3}
        gate.set()
        got: list[Any] = []
        wait_until(lambda: bool(got.extend(_collect(r))) or len(got) == 3, timeout=10, interval=0.01,
                   what="the held reads answered")
        r.submit(Read(lambda: "again", "after"), "flow-y", None)  # room again
    finally:
        gate.set()
        r.close()


def test_a_read_that_ends_after_close_writes_to_no_descriptor() -> None:
    """A read still running when the daemon stops ends later on its thread: it must not write its wake byte to
    the closed pipe's descriptor number, which the process may have given to another file meanwhile."""
    gate = threading.Event()
    r = Reads()
    r.submit(Read(gate.wait, "held"), "flow", None)
    wake_r, wake_w = r._wake_r, r._wake_w  # noqa: SLF001
    r.close()
    for fd in (wake_r, wake_w):  # close() released the wake pipe's descriptors
        with pytest.raises(OSError):
            os.fstat(fd)
    pr, pw = os.pipe()
    reused_r, reused_w = fcntl.fcntl(pr, fcntl.F_DUPFD, 200), fcntl.fcntl(pw, fcntl.F_DUPFD, 200)
    os.close(pr)
    os.close(pw)
    os.dup2(reused_w, wake_w)  # the freed number now names another file, as it may in the daemon
    try:
        os.set_blocking(reused_r, False)
        gate.set()
        wait_until(lambda: not r._done.empty(), timeout=10, interval=0.01, what="the read to end")
        with pytest.raises(BlockingIOError):  # a late wake byte would have landed here
            os.read(reused_r, 10)
    finally:
        for fd in (reused_r, reused_w, wake_w):
            os.close(fd)


def test_a_wake_byte_left_by_a_read_that_ended_while_others_were_resumed_is_drained() -> None:
    """Two reads end close together: the second ends while the first is being resumed (after the wake pipe was
    read), so it is resumed in the same pass and its wake byte stays in the pipe with nothing pending. The next
    pass of the loop, which sees the pipe readable, must empty it: a byte left there made every poll of the
    daemon's loop return at once, a core spinning for as long as no other read came (found by a review)."""
    gates = [threading.Event(), threading.Event()]
    r = Reads()
    try:
        r.submit(Read(gates[0].wait, "first"), "flow-0", None)
        r.submit(Read(gates[1].wait, "second"), "flow-1", None)
        gates[0].set()
        wait_until(lambda: bool(select.select([r.fileno()], [], [], 0)[0]), timeout=10, interval=0.01,
                   what="the first read's wake byte")
        resumed: list[Any] = []

        def resume(flow: Any, result: Any, error: BaseException | None, ctx: Any) -> None:
            resumed.append(flow)
            if flow == "flow-0":  # the second read ends now, after the pipe was read and before the queue is empty
                gates[1].set()
                wait_until(lambda: bool(select.select([r.fileno()], [], [], 0)[0]), timeout=10, interval=0.01,
                           what="the second read's wake byte")

        r.serve({r.fileno()}, resume)
        assert resumed == ["flow-0", "flow-1"] and len(r) == 0
        assert select.select([r.fileno()], [], [], 0)[0]  # the byte the loop's next poll sees
        r.serve({r.fileno()}, resume)
        assert not select.select([r.fileno()], [], [], 0)[0]  # drained: the loop's poll waits again
        assert resumed == ["flow-0", "flow-1"]
    finally:
        for g in gates:
            g.set()
        r.close()
