"""Values the store accepted nested ~250 levels deep can be read back: a reply carries them a few levels further
down than they were sent, past the 255 levels JSON takes (review of 2026-12-02)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from tests.conftest import wait_until

FLOWS = textwrap.dedent('''
    def deep(ctx, n: int = 251):
        d = []
        for _ in range(n):
            d = [d]
        ctx.emit("deep", d)
        ctx.emit("after", {"ok": True})
        return ctx.approval("check", "deep?", context=d, timeout=60, policy="reject").decision
''')


def _depth(value: Any) -> tuple[int, Any]:
    depth = 0
    while isinstance(value, list) and value:
        value, depth = value[0], depth + 1
    return depth, value


def test_an_approval_and_an_event_nested_251_deep_are_listed_with_the_deep_part_cut(daemon, tmp_path: Path) -> None:
    """A session emits a custom event and asks an approval, each with a value nested 251 levels (what ctx.emit and
    ctx.approval accept). ``approvals.list`` (of every session) and the session's events still answer, each such value
    cut where the reply would pass the limit (``{"unsent": why}``), the other events intact, and the approval can be
    resolved from that list. Before, both requests failed ``reply_unencodable`` while the approval was pending (so no
    session's approvals could be listed), and the events for good."""
    (tmp_path / "flows.py").write_text(FLOWS)
    with daemon.client() as c:
        sid = c.start(f"{tmp_path / 'flows.py'}:deep", params={})
        pending = wait_until(lambda: c.approvals(), timeout=30)
        [ap] = pending
        depth, leaf = _depth(ap["context"])
        assert 200 < depth < 251 and "unsent" in leaf, (depth, leaf)
        events = c.events(sid, kinds=["custom"])["events"]
        assert [e["payload"]["name"] for e in events] == ["deep", "after"]
        assert "unsent" in _depth(events[0]["payload"]["data"])[1] and events[1]["payload"]["data"] == {"ok": True}
        c.resolve(sid, "approve", approval_id=ap["id"])
        assert c.wait(sid, timeout=60)["status"] == "completed" and c.result(sid) == "approve"
        assert [e["kind"] for e in c.history(sid)][-1] == "session.ended"
