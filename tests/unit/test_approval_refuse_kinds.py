"""``approval.resolve`` with ``refuse_kinds`` (how ``labd mcp`` asks: a model may not answer an approval a policy rule
requires of a human) refuses the approval it names whatever number of approvals the session has pending (an attack
review, 2026-12-04)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from sqlalchemy import insert

from labd.daemon.api.agents import ResolveApproval
from labd.daemon.api.base import ApiError
from labd.store.queries import Store
from labd.store.schema import approvals, sessions

SID = "5e55" + "0" * 8


class _Daemon:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.posted: list[tuple[str, str, dict[str, Any]]] = []

    def defer(self, *_: Any) -> None:
        pass

    def post_event(self, sid: str, kind: str, payload: dict[str, Any], **_: Any) -> None:
        self.posted.append((sid, kind, payload))


def _approval(aid: str, kind: str, at: float) -> dict[str, Any]:
    return {"id": aid, "session_id": SID, "kind": kind, "prompt": "run it?", "options": '["approve", "reject"]',
            "context": "null", "status": "pending", "requested_at": at}


def test_a_policy_approval_after_the_first_500_pending_is_still_refused(sqlite_store: Any) -> None:
    """A session with 500 pending workflow approvals and then a policy approval: answering the policy approval by its
    id with ``refuse_kinds=["policy"]`` is ``human_required``, and nothing is posted; a workflow approval is still
    answered. Before, the kind was looked up among the session's pending approvals as one page of at most 500 (the
    oldest): the 501st was not in it, its kind read as unknown, and the answer was posted (ingest records it)."""
    store, _writer = sqlite_store
    now = time.time()
    with store.engine.begin() as conn:
        conn.execute(insert(sessions).values(id=SID, name="s", workflow="w", params="{}",
                                             limits=orjson.dumps({}).decode(), workdir="/tmp", status="running",
                                             created_at=now))
        conn.execute(insert(approvals), [_approval(f"ap-w{i:04d}", "hitl", now + i) for i in range(500)]
                     + [_approval("ap-policy", "policy", now + 600)])
    d = _Daemon(store)
    body = {"session": SID, "decision": "approve", "approval_id": "ap-policy", "refuse_kinds": ["policy"], "by": "mcp"}
    with pytest.raises(ApiError) as err:
        ResolveApproval(d, body, (b"", "r1")).execute()  # type: ignore[arg-type]
    assert err.value.code == "human_required", err.value.message
    assert d.posted == []
    ResolveApproval(d, {**body, "approval_id": "ap-w0499"}, (b"", "r2")).execute()  # type: ignore[arg-type]
    assert [p[2]["approval_id"] for p in d.posted] == ["ap-w0499"]
