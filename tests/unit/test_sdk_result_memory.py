"""`Client.result` of a session that failed reads its custom events page by page, never holding them all."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from labd.ipc.functions import ERROR_EVENT, FUNCTION_WORKFLOW, RemoteError
from labd.ipc.waiting import Waiting

EVENTS = 100_000  # ~1 KB each: ~100 MB if held at once


class _Record(Waiting):
    """A failed session's record as the daemon would page it: many custom events, the function's error among them."""

    local = False

    def session(self, ref: str) -> dict[str, Any]:
        return {"id": "s1", "status": "failed", "last_seq": EVENTS + 2, "reason": "workflow failed",
                "workflow": FUNCTION_WORKFLOW}  # a submitted function's session: its error event is read

    def events(self, ref: str, since: int = 0, limit: int = 5000, kinds: list[str] | None = None, *,
               full: bool = False, node: str | None = None, agent: str | None = None) -> dict[str, Any]:
        assert kinds == ["session.finished"]
        return {"events": [{"seq": EVENTS + 2, "kind": "session.finished",
                            "payload": {"outcome": "failed", "error": "ValueError: late"}}], "more": False}

    def history(self, ref: str, since: int = 0, kinds: list[str] | None = None, *, full: bool = False,
                node: str | None = None, agent: str | None = None) -> Iterator[dict[str, Any]]:
        if kinds == ["session.continued"]:  # never resumed: its one run counts
            return
        assert kinds == ["custom"]
        yield {"seq": 1, "kind": "custom", "payload": {"name": ERROR_EVENT, "data": {
            "type": "KeyError", "message": "'x'", "traceback": "Traceback ..."}}}
        for i in range(EVENTS):  # a metric logged with ctx.emit, many times
            data = {"i": i, "note": f"{i:0>1000}"}
            yield {"seq": i + 2, "kind": "custom", "payload": {"name": "metric", "data": data}}


def test_result_of_a_failed_session_does_not_hold_its_custom_events() -> None:
    """`result()` of a session that failed finds the function's recorded exception among its custom events with at most
    a few MB in use, however many events it has (100,000 of ~1 KB here); before, it listed them all first (~170 MB)."""
    tracemalloc.start()
    try:
        with pytest.raises(RemoteError) as err:
            _Record().result("s1")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (err.value.type_name, err.value.session) == ("KeyError", "s1")
    assert peak < 10_000_000, f"{peak:,} bytes at peak"
