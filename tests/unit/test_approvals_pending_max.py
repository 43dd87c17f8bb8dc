"""A session has at most ``APPROVALS_PENDING_MAX`` approvals pending at once (labd.ipc.events): the runner refuses
one more with a clear error before anything is sent, and asks again once an answer frees a place. (The daemon
rejects one more from a runner that writes its own frames: tests/integration/test_approval_bounds.py.)"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import labd.runner.approvals as approvals_mod
from labd.runner.approvals import Approvals


def _until(pred: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_one_approval_past_the_bound_raises_and_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the bound at 3: three approvals wait; a fourth raises RuntimeError naming the bound and emits no event;
    once one of the three is answered, a new one is asked (and emitted)."""
    monkeypatch.setattr(approvals_mod, "APPROVALS_PENDING_MAX", 3)
    cancelled = threading.Event()
    asked: list[dict[str, Any]] = []
    ap = Approvals(lambda kind, payload, node=None: asked.append(payload) or len(asked), cancelled)
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(ap.request("k", "p").decision), daemon=True)
               for _ in range(3)]
    try:
        for t in threads:
            t.start()
        _until(lambda: len(ap.waiting_ids()) == 3, "three approvals pending")
        with pytest.raises(RuntimeError, match="3 approvals of this session are pending already"):
            ap.request("k", "one too many")
        assert len(asked) == 3 and all(p["prompt"] == "p" for p in asked)  # the fourth was never sent
        ap.on_resolved({"approval_id": asked[0]["approval_id"], "decision": "approve"})
        _until(lambda: got == ["approve"], "the first answer")
        fourth = threading.Thread(target=lambda: got.append(ap.request("k", "now").decision), daemon=True)
        fourth.start()
        _until(lambda: len(asked) == 4, "the new request sent")
        assert asked[3]["prompt"] == "now"
    finally:
        cancelled.set()  # the waiters see the cancellation and end
