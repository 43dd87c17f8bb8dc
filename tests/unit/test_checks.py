"""The workflow checks in flight are bounded: a flood of starts of user workflows forks at most
``MAX_RUNNING`` import children at a time, queues a bounded number more, and refuses the rest with ``busy``."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from labd.daemon import checks as checks_mod
from labd.daemon.api.base import ApiError
from labd.daemon.checks import Check, Checks


def _flow(results: list[Any], tag: str) -> Generator[Check, dict[str, Any], Any]:
    answer = yield Check(f"m:{tag}", {}, None)
    results.append((tag, answer["ok"]))
    return tag


def test_at_most_max_running_checks_at_once_the_rest_wait_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Six checks with room for four: four start at once; each answer starts the oldest waiting one; a flood
    past the waiting room is refused with ``busy``; resumed flows get their own answers."""
    monkeypatch.setattr(checks_mod, "MAX_WAITING", 2)
    started: list[str] = []

    def start(check: Check) -> int:
        started.append(check.workflow)
        return len(started)  # request ids 1, 2, ...

    results: list[Any] = []
    q = Checks(start)
    for tag in "abcdef":  # four run, two wait
        flow = _flow(results, tag)
        q.submit(flow.send(None), flow, tag)
    assert started == ["m:a", "m:b", "m:c", "m:d"] and len(q) == 6
    flood = _flow(results, "g")
    with pytest.raises(ApiError) as info:
        q.submit(flood.send(None), flood, "g")
    assert info.value.code == "busy" and len(q) == 6

    def resume(flow: Any, answer: dict[str, Any], ctx: Any) -> Check | None:
        try:
            flow.send(answer)
        except StopIteration:
            return None
        raise AssertionError("a flow with one check ended after it")

    q.answered([(2, {"ok": True})], resume)
    assert results == [("b", True)] and started[4] == "m:e" and len(q) == 5
    q.answered([(1, {"ok": False}), (99, {"ok": True})], resume)  # an unknown id is ignored
    assert results == [("b", True), ("a", False)] and started[5:] == ["m:f"]
    q.close()
    assert len(q) == 0


def test_a_checked_module_cannot_forge_template_messages_through_its_answer() -> None:
    """The user's module runs in the check child and holds the answer pipe. Whatever it writes, the template
    passes on an `inspected` reply for this check only: a forged `{"op": "exited", "pid": ...}` (which would have
    made the daemon end another session) keeps only the answer's own fields, a non-object is a crash, and an
    answer past MAX_ANSWER_BYTES stops the child instead of growing the template's memory (attack review)."""
    import json
    import os

    from labd.runner.checks import MAX_ANSWER_BYTES, Check

    def answer_of(data: bytes) -> dict:
        r, w = os.pipe()
        check = Check(7, os.getpid() + 10**7, r)  # a pid that does not exist: the kill finds no process
        os.set_blocking(r, False)
        os.write(w, data[:60000])
        os.close(w)
        check.data = data[60000:]
        while not check.read():
            pass
        return check.answer()

    forged = answer_of(json.dumps({"op": "exited", "pid": 4242, "exit_code": 0, "signal": None, "ok": True,
                                   "req": 1, "params": {"n": 1}}).encode())
    assert forged == {"ok": True, "params": {"n": 1}, "op": "inspected", "req": 7}
    for junk in (b"[1]", b'"x"', b"{}", b'{"ok": "yes"}', b"not json"):
        assert answer_of(junk) == {"ok": False, "code": "workflow_import_failed", "op": "inspected", "req": 7,
                                   "message": "inspecting the workflow crashed its process"}
    big = answer_of(b'{"ok": true, "message": "' + b"x" * (MAX_ANSWER_BYTES + 1) + b'"}')
    assert big["ok"] is False and big["op"] == "inspected"
