"""Threads waiting for an approval sleep until it is answered or the session is cancelled: no periodic wake-ups
(2,000 waiters used to cost ~1.8 cores, each waking every 0.25 s), and a cancellation still wakes them all."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from labd.runner.approvals import Approvals

N = 50
_EVENT_WAIT = threading.Event.wait.__code__


class Stop(Exception):
    pass


class Waits:
    """Counts the ``threading.Event.wait`` calls made from runner/approvals.py (by the threads started while it is
    installed), with the timeout of each: every iteration of a waiting loop is one such call."""

    def __init__(self, cancelled: threading.Event) -> None:
        self.cancelled = cancelled
        self.calls: list[Any] = []  # the timeout of each wait of a waiter
        self.watcher = 0  # waits on the cancellation event itself

    def profile(self, frame: Any, event: str, _arg: Any) -> None:
        if event != "call" or frame.f_code is not _EVENT_WAIT:
            return
        caller = frame.f_back
        if caller is None or not caller.f_code.co_filename.endswith("approvals.py"):
            return
        if frame.f_locals.get("self") is self.cancelled:
            self.watcher += 1
        else:
            self.calls.append(frame.f_locals.get("timeout"))


@pytest.fixture
def setup() -> Iterator[tuple[Approvals, threading.Event, Waits, list[dict[str, Any]]]]:
    cancelled = threading.Event()
    asked: list[dict[str, Any]] = []
    approvals = Approvals(lambda kind, payload, node=None: asked.append(payload) or len(asked), cancelled)
    waits = Waits(cancelled)
    threading.setprofile(waits.profile)
    try:
        yield approvals, cancelled, waits, asked
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
        cancelled.set()


def _until(pred: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _waiters(approvals: Approvals, results: list[Any], on_cancel: Any) -> list[threading.Thread]:
    def wait(i: int) -> None:
        try:
            results[i] = approvals.request("review", f"question {i}", on_cancel=on_cancel)
        except BaseException as exc:  # noqa: BLE001 - the outcome is what the test checks
            results[i] = exc

    threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(N)]
    for t in threads:
        t.start()
    return threads


def test_waiters_do_not_wake_until_cancelled_and_then_all_end_promptly(setup) -> None:
    """50 threads waiting for approvals make one untimed wait each and no other (however long they wait: the
    count after a 1 s window is still 50, none with a timeout); the watcher waits once on the cancellation.
    Cancelling wakes every waiter, whose on_cancel raises, and nothing is left waiting."""
    approvals, cancelled, waits, asked = setup
    results: list[Any] = [None] * N

    def stop() -> None:
        raise Stop("cancelled")

    threads = _waiters(approvals, results, stop)
    _until(lambda: len(asked) == N and len(waits.calls) == N, f"{N} waiting")
    time.sleep(1.0)  # the old loop woke each waiter 4 times in this second
    assert len(waits.calls) == N and set(waits.calls) == {None}, (len(waits.calls), set(waits.calls))
    assert waits.watcher == 1
    assert len(approvals.waiting_ids()) == N
    cancelled.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert all(isinstance(r, Stop) for r in results), results
    assert approvals.waiting_ids() == []


def test_an_answer_wakes_only_its_waiter_and_one_arriving_after_a_cancel_is_not_lost(setup) -> None:
    """An answer wakes its own waiter, which returns the decision; the others sleep on (one wait each). Without an
    on_cancel a cancellation wakes the waiters once and they wait on for their answers, which still arrive."""
    approvals, cancelled, waits, asked = setup
    results: list[Any] = [None] * N
    threads = _waiters(approvals, results, None)
    _until(lambda: len(asked) == N and len(waits.calls) == N, f"{N} waiting")
    approvals.on_resolved({"approval_id": asked[0]["approval_id"], "decision": "approve", "by": "me"})
    index = int(asked[0]["prompt"].split()[1])
    threads[index].join(30)
    assert results[index].decision == "approve" and results[index].by == "me"
    assert len(waits.calls) == N
    cancelled.set()
    _until(lambda: len(waits.calls) == 2 * N - 1, "each other waiter woken once, waiting again")
    for p in asked[1:]:
        approvals.on_resolved({"approval_id": p["approval_id"], "decision": "reject"})
    for t in threads:
        t.join(30)
    assert all(getattr(r, "decision", None) in ("approve", "reject") for r in results), results
    assert len(waits.calls) == 2 * N - 1 and approvals.waiting_ids() == []
