"""Idempotent branches: a retried ``session.branch`` (same idempotency key) answers the sessions the first attempt
made, never a second set; also when the retry comes while the first is still being made, after the client gave up on
its reply. Before, a durable-sessions review killed the daemon just after a branch of 2 was sent, retried, and had 4."""

from __future__ import annotations

from typing import Any

import pytest

from labd.ipc import LabdError
from tests.conftest import DaemonProc
from tests.integration.test_skill_idempotency import _completed, _retried_while_stopped

pytestmark = pytest.mark.timeout(180)


def _branches_of(c: Any, sid: str) -> list[str]:
    return sorted(s["id"] for s in c.sessions(status=[], limit=1000) if s.get("parent_id") == sid)


def test_a_branch_sent_again_with_its_key_makes_its_sessions_once(shared_daemon: DaemonProc) -> None:
    """The same branch sent twice with one key: the second answer names the first's sessions (``replayed``) and
    nothing more is made; the same key for another branch (another count) is ``idempotency_conflict``."""
    with shared_daemon.client(timeout=60) as c:
        sid = _completed(c)
        first = c.branch(sid, "count 1", count=2, idempotency_key="branch-once")
        again = c.branch(sid, "count 1", count=2, idempotency_key="branch-once")
        made = sorted(s["session"] for s in first["sessions"])
        assert again.get("replayed") is True and sorted(s["session"] for s in again["sessions"]) == made
        assert again["parent"] == sid and again["node"] == first["node"]
        assert _branches_of(c, sid) == made
        with pytest.raises(LabdError) as err:
            c.branch(sid, "count 1", count=3, idempotency_key="branch-once")
        assert err.value.code == "idempotency_conflict", err.value
        assert _branches_of(c, sid) == made


def test_the_sdk_retries_a_branch_whose_reply_did_not_come_and_makes_it_once(shared_daemon: DaemonProc) -> None:
    """The review's case: the daemon does not answer in time (stopped), the SDK gives up and sends the branch again
    with its key; once the daemon goes on it gets both attempts (the second while the first is being made) and makes
    2 sessions, not 4; the answer names them."""
    with shared_daemon.client(timeout=60) as c:
        sid = _completed(c)
    got = _retried_while_stopped(shared_daemon, lambda h: h.branch(sid, "count 1", count=2, retries=20),
                                 "session.branch")
    with shared_daemon.client(timeout=60) as c:
        made = _branches_of(c, sid)
    assert len(made) == 2 and sorted(s["session"] for s in got["sessions"]) == made, (got, made)
