"""Idempotent session.start: a retried request (same idempotency key) never starts a second session, also when
the retry comes while the first is still in flight, or after a daemon restart (issue 8, item 12)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProc, running_daemon, wait_until


def _count_sessions(home: Path) -> int:
    with sqlite3.connect(home / "labd.db") as conn:
        return int(conn.execute("SELECT count(*) FROM sessions").fetchone()[0])


def _ids(c: Any) -> set[str]:
    """The ids of the daemon's sessions (the module's shared daemon: other tests' sessions are there too)."""
    return {s["id"] for s in c.sessions(limit=1000)}


def test_same_key_twice_returns_the_first_session(shared_daemon: DaemonProc) -> None:
    """The second start with the same key replies with the first session (marked `replayed`) and starts
    nothing; a different key starts a new session; the key is stored with the session."""
    with shared_daemon.client() as c:
        before = _ids(c)
        body = {"workflow": "demo.count", "params": {"n": 2, "delay": 0.01}, "idempotency_key": "k-1"}
        first = c.request("session.start", **body)
        again = c.request("session.start", **body)
        assert again["session"] == first["session"] and again.get("replayed") is True
        assert "replayed" not in first
        other = c.start("demo.count", params={"n": 2, "delay": 0.01}, idempotency_key="k-2")
        assert other != first["session"]
        assert _ids(c) - before == {first["session"], other}
        c.wait(first["session"], timeout=60)
        created = next(e for e in c.history(first["session"]) if e["kind"] == "session.created")
        assert created["payload"]["idempotency_key"] == "k-1"


def test_retry_in_flight_gives_one_session(shared_daemon: DaemonProc) -> None:
    """Identical starts sent back to back, the retries before the first is committed or answered, get the
    same session: in-flight keys are remembered, not only committed ones. A retry is answered only once that
    session is in the store, so the session it names can be read at once (it was answered from memory before
    the commit, and a client reading the session right after could find nothing)."""
    daemon = shared_daemon
    with daemon.client() as c:
        before, count_before = _ids(c), _count_sessions(daemon.home)
        body = {"workflow": "demo.count", "params": {"n": 1, "delay": 0.01}, "idempotency_key": "burst"}
        frames = [c._codec.pack("session.start", body) for _ in range(4)]
        for f in frames:
            c._sock.send_multipart(f)
        replies = []
        while len(replies) < 4:
            assert c._sock.poll(30_000), "no reply"
            replies.append(c._codec.unpack(c._sock.recv_multipart()).body)
            assert replies[-1]["ok"], replies
            # whichever reply comes first, its session is already readable
            assert _count_sessions(daemon.home) == count_before + 1
        sids = {r["result"]["session"] for r in replies}
        assert len(sids) == 1, replies
        assert sum(1 for r in replies if r["result"].get("replayed")) == 3
        assert _ids(c) - before == sids


def test_timed_out_start_retried_with_its_key_runs_once(shared_daemon: DaemonProc) -> None:
    """The issue's case: a start times out at the client but runs in the daemon; the retry with the same key
    (as the SDK does) returns that session instead of starting a second run. The SDK's own retry loop with
    a too-short timeout also ends with exactly one session."""
    from labd.ipc import Client, LabdError

    daemon = shared_daemon
    with daemon.client() as c:
        before = _ids(c)
    with Client(daemon.home, timeout=0.001) as hasty:
        with pytest.raises(LabdError) as err:
            hasty.start("demo.count", params={"n": 1, "delay": 0.01}, idempotency_key="slow", retries=0)
        assert err.value.code == "timeout"
    with daemon.client() as c:
        sid = c.start("demo.count", params={"n": 1, "delay": 0.01}, idempotency_key="slow")
        assert _ids(c) - before == {sid}  # answered once committed: readable at once
    with Client(daemon.home, timeout=0.05) as quick:
        sid2 = quick.start("demo.count", params={"n": 1, "delay": 0.01}, retries=400)
    with daemon.client() as c:
        assert _ids(c) - before == {sid, sid2}


def test_same_key_after_daemon_restart(isolated_env: Path) -> None:
    """Keys are committed with the session in the store: after a daemon restart the same key still returns
    the first session."""
    with running_daemon(isolated_env) as d, d.client() as c:
        sid = c.start("demo.count", params={"n": 1, "delay": 0.01}, idempotency_key="durable")
        c.wait(sid, timeout=60)
    with running_daemon(isolated_env) as d, d.client() as c:
        again = c.request("session.start", workflow="demo.count", params={"n": 1, "delay": 0.01},
                          idempotency_key="durable")
        assert again["session"] == sid and again["replayed"] is True
        assert len(c.sessions()) == 1


def test_key_reused_for_another_request_is_refused(shared_daemon: DaemonProc) -> None:
    """A key re-used with different params is a client bug: refused with `idempotency_conflict` (naming the
    first session), not silently answered with a session that does something else."""
    from labd.ipc import LabdError

    with shared_daemon.client() as c:
        before = _ids(c)
        sid = c.start("demo.count", params={"n": 1, "delay": 0.01}, idempotency_key="k")
        with pytest.raises(LabdError) as err:
            c.start("demo.count", params={"n": 2, "delay": 0.01}, idempotency_key="k")
        assert err.value.code == "idempotency_conflict" and err.value.details["session"] == sid
        with pytest.raises(LabdError) as err:
            c.request("session.start", workflow="demo.count", idempotency_key="")
        assert err.value.code == "bad_request"
        assert _ids(c) - before == {sid}


def test_expired_keys_are_pruned(isolated_env: Path) -> None:
    """Retention is bounded: a key older than the retention period no longer replays, and is deleted from the
    store when new keys are added."""
    from labd.store.schema import IDEMPOTENCY_RETENTION

    with running_daemon(isolated_env) as d, d.client() as c:
        old = c.start("demo.count", params={"n": 1, "delay": 0.01}, idempotency_key="old")
        c.wait(old, timeout=60)
    with sqlite3.connect(isolated_env / "labd.db") as conn:
        conn.execute("UPDATE idempotency_keys SET created_at = created_at - ? WHERE key = 'old'",
                     (IDEMPOTENCY_RETENTION + 60,))
    with running_daemon(isolated_env) as d, d.client() as c:
        new = c.start("demo.count", params={"n": 1, "delay": 0.01}, idempotency_key="old")
        assert new != old
        wait_until(lambda: _keys(isolated_env) == [("old", new)], what="expired key replaced")


def _keys(home: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(home / "labd.db") as conn:
        return [tuple(r) for r in conn.execute("SELECT key, session_id FROM idempotency_keys")]


def test_a_replay_retried_with_its_key_is_the_same_replay(shared_daemon: DaemonProc) -> None:
    """`session.replay` with an idempotency key and no name, sent twice (what `Client.replay` does when its first
    attempt timed out): the second answers the first replay (marked `replayed`), not `idempotency_conflict`; the
    default name (`replay-<parent>-<4 hex>`) no longer differs between the two (found by a review). Without a key,
    two replays are two sessions with different names."""
    with shared_daemon.client() as c:
        parent = c.start("demo.count", params={"n": 2, "delay": 0.01})
        assert c.wait(parent, timeout=60)["status"] == "completed"
        first = c.request("session.replay", session=parent, idempotency_key="r-1")
        again = c.request("session.replay", session=parent, idempotency_key="r-1")
        assert again["session"] == first["session"] and again.get("replayed") is True
        assert first["name"].startswith("replay-") and again["name"] == first["name"]
        plain = [c.request("session.replay", session=parent) for _ in range(2)]
        assert plain[0]["session"] != plain[1]["session"]
        for r in (first, *plain):
            c.wait(r["session"], timeout=60)
