"""The run queue's order and capacity rules (daemon/queue.py), and the queued status in projections."""

from __future__ import annotations

from typing import Any

from labd.daemon.limits import Limits
from labd.daemon.queue import RunQueue
from labd.store.projections import RowChanges, SessionCursor, apply


def _push(q: RunQueue, sid: str, priority: int = 0, memory: int | None = None, at: float = 0.0) -> None:
    q.push(q.entry(sid, "demo.sleep", {}, Limits(memory=memory), "/w", priority, at))


def test_priority_first_then_submission_order() -> None:
    """Higher priority goes first; equal priorities keep submission order; positions are 1-based."""
    q = RunQueue(max_sessions=1)
    for i, (sid, prio) in enumerate([("a", 0), ("b", 0), ("c", 5), ("d", 0)]):
        _push(q, sid, prio, at=float(i))
    assert q.positions() == {"c": 1, "a": 2, "b": 3, "d": 4}
    order = []
    while len(q):
        (started,) = q.admit([])
        order.append(started.sid)
    assert order == ["c", "a", "b", "d"]


def test_capacity_and_strict_head_of_line() -> None:
    """max_sessions bounds runners; with memory_total, a big head waits and nothing smaller overtakes it."""
    q = RunQueue(max_sessions=2)
    _push(q, "a")
    _push(q, "b")
    _push(q, "c")
    assert [x.sid for x in q.admit([Limits()])] == ["a"]  # one slot left
    q = RunQueue(memory_total=100)
    _push(q, "big", memory=80, at=1)
    _push(q, "small", memory=10, at=2)
    assert q.admit([Limits(memory=50)]) == []  # 50 + 80 > 100, and "small" may not jump the queue
    assert [x.sid for x in q.admit([])] == ["big", "small"]
    assert q.never_fits(Limits(memory=101)) and not q.never_fits(Limits(memory=100))


def test_removed_entries_never_start() -> None:
    """A session taken out of the queue (stopped) is skipped and no longer has a position."""
    q = RunQueue(max_sessions=1)
    _push(q, "a", at=1)
    _push(q, "b", at=2)
    assert q.remove("a") and not q.remove("a")
    assert q.position("a") is None and q.position("b") == 1
    assert [x.sid for x in q.admit([])] == ["b"]


def test_queued_status_transitions() -> None:
    """session.queued moves created -> queued; launch moves queued -> starting; a queued session can end."""
    cur, out = SessionCursor("s1"), RowChanges()
    apply(cur, 1, 1.0, "session.created", "d", None, {"workflow": "w", "name": "n", "params": {}, "limits": {},
                                                      "workdir": "/w"}, out)
    apply(cur, 2, 2.0, "session.queued", "d", None, {"position": 3, "priority": 0}, out)
    assert cur.status == "queued"
    assert out.history[-1]["reason"] == "waiting for room in the run queue (max_sessions, memory_total)"
    apply(cur, 3, 3.0, "session.launched", "d", None, {"pid": 1, "create_time": 1.0, "launcher": "template"}, out)
    assert cur.status == "starting"
    cur2, out2 = SessionCursor("s2", status="queued"), RowChanges()
    ended = {"status": "cancelled", "reason": "stopped while queued (by client)", "ended_by": "queue"}
    apply(cur2, 5, 5.0, "session.ended", "d", None, ended, out2)
    assert cur2.status == "cancelled"


def test_push_is_cheap_and_positions_follow_removals() -> None:
    """push does not compute a position (a daemon re-queuing many sessions at start does not sort for each);
    position() counts the live entries ahead; a stopped session leaves no gap, and a session stopped and
    queued again under the same id takes its new place (the stale heap entry is skipped, not the new one)."""
    q = RunQueue(max_sessions=1)
    for i, sid in enumerate("abcd"):
        assert q.push(q.entry(sid, "demo.sleep", {}, Limits(), "/w", 0, float(i))) is None
    assert [q.position(s) for s in "abcd"] == [1, 2, 3, 4] and q.position("zz") is None
    assert q.remove("b") and not q.remove("b")
    assert q.positions() == {"a": 1, "c": 2, "d": 3} and q.position("d") == 3
    assert q.remove("a")
    _push(q, "a", at=10.0)  # back, at the end
    assert q.positions() == {"c": 1, "d": 2, "a": 3}
    assert [x.sid for x in q.admit([])] == ["c"]
    assert [x.sid for x in q.admit([])] == ["d"]
    assert [x.sid for x in q.admit([])] == ["a"] and not len(q)


def test_an_entry_that_can_never_fit_is_set_aside_not_left_blocking() -> None:
    """A queued entry whose memory reservation exceeds ``memory_total`` (the configuration shrank after it was
    queued) is taken off the head and handed back in ``unfit``, so the sessions behind it start; the strict order
    still holds for an entry that only has to wait."""
    q = RunQueue(memory_total=100)
    _push(q, "big", memory=150, at=1)
    _push(q, "small", memory=10, at=2)
    _push(q, "s2", memory=95, at=3)
    unfit: list = []
    assert [x.sid for x in q.admit([], unfit)] == ["small"]  # s2 waits: 10 + 95 > 100, in order
    assert [x.sid for x in unfit] == ["big"] and "big" not in q and len(q) == 1
    assert q.unfit_reason(Limits(memory=150)) is not None and q.unfit_reason(Limits(memory=100)) is None


def test_a_session_in_the_queue_reads_queued_before_its_event_is_stored() -> None:
    """``session.get``/``session.list`` (api/sessions.live_view) show a session the run queue holds as ``queued``
    with its place, even while the store still says ``created`` (its ``session.queued`` is committed a batch after
    the ``session.created`` whose commit answered the start: a client asking at once saw ``created``)."""
    from types import SimpleNamespace

    from labd.daemon.api.sessions import live_view

    q = RunQueue(max_sessions=1)
    _push(q, "waiting", priority=3)
    daemon = SimpleNamespace(monitor=SimpleNamespace(snapshot_of=lambda sid: None), last_seen={},
                             supervisor=SimpleNamespace(queue=q, pausing=lambda sid, status: None))
    req = SimpleNamespace(daemon=daemon)
    seen = live_view(req, {"id": "waiting", "status": "created"})  # type: ignore[arg-type]
    assert (seen["status"], seen["queue_position"], seen["queue_priority"]) == ("queued", 1, 3)
    listed = live_view(req, {"id": "waiting", "status": "created"}, {}, q.positions())  # type: ignore[arg-type]
    assert listed["status"] == "queued"
    launched = live_view(req, {"id": "gone", "status": "created"})  # type: ignore[arg-type]  # not queued: as stored
    assert launched["status"] == "created" and launched["queue_position"] is None


def test_listing_by_status_goes_by_the_status_shown() -> None:
    """``session.list`` with ``status`` filters on the status it shows: a session the queue holds but the store
    still has ``created`` is listed under ``queued`` (it was missing there) and not under ``created``."""
    from types import SimpleNamespace

    from labd.daemon.api.sessions import ListSessions

    q = RunQueue(max_sessions=1)
    _push(q, "waiting")
    rows = [{"id": "waiting", "status": "created", "params": {}}, {"id": "new", "status": "created", "params": {}},
            {"id": "old", "status": "queued", "params": {}}]
    asked: list[Any] = []

    def sessions(status: list[str] | None = None, **_kw: Any) -> list[dict[str, Any]]:
        asked.append(status)
        return [r for r in rows if status is None or r["status"] in status]

    daemon = SimpleNamespace(store=SimpleNamespace(sessions=sessions), last_seen={},
                             supervisor=SimpleNamespace(queue=q, pausing=lambda sid, status: None),
                             monitor=SimpleNamespace(snapshot=dict, snapshot_of=lambda sid: None))

    def listed(**body: Any) -> list[tuple[str, str]]:
        out = ListSessions(daemon, body, (b"", "r")).execute()  # type: ignore[arg-type]
        return [(r["id"], r["status"]) for r in out["sessions"]]

    assert listed(status=["queued"]) == [("waiting", "queued"), ("old", "queued")]
    assert listed(status=["created"]) == [("new", "created")]
    assert listed() == [("waiting", "queued"), ("new", "created"), ("old", "queued")]
    assert asked[0] == ["queued", "created"] and asked[1] == ["created"]
