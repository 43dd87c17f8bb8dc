"""The follow cursor (labd.ipc.follow) that ``Client.follow`` and ``labd top``'s feed share: a live tail that drops,
repeats and races the store still yields every event exactly once, in ``seq`` order."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from labd.ipc.follow import FollowCursor, still_ended


def _ev(seq: int, kind: str = "output") -> dict[str, Any]:
    return {"seq": seq, "kind": kind}


def _follow(store: list[dict[str, Any]], live: list[dict[str, Any]], since: int = 0,
            first_read: int | None = None) -> list[int]:
    """The loop both followers run: the store first (holding its first ``first_read`` events then), then the live
    tail with each gap read from the store (which by then holds every event published: commit comes first)."""
    cursor = FollowCursor(since)
    out: list[int] = []

    def from_store(upto: int | None, held: int | None = None) -> None:
        for ev in store[:held]:
            if ev["seq"] <= cursor.last:
                continue  # the store is asked for events after the cursor
            if upto is not None and ev["seq"] > upto:
                return
            if cursor.stored(ev):
                out.append(ev["seq"])

    from_store(None, first_read)
    for ev in live:
        upto = cursor.gap_before(ev)
        if upto is not None:
            from_store(upto)
        if cursor.live(ev):
            out.append(ev["seq"])
    return out


def test_a_gap_in_the_live_tail_is_filled_from_the_store_and_duplicates_dropped() -> None:
    """The store held 1-3 when the follower read it; the live tail then repeats 3, drops 4-6 and brings 7 and 8:
    4-6 come from the store before 7, the repeated 3 is not delivered twice."""
    store = [_ev(i) for i in range(1, 9)]
    assert _follow(store, [_ev(3), _ev(7), _ev(8), _ev(8)], first_read=3) == list(range(1, 9))


def test_a_follower_starting_part_way_jumps_forward_on_the_store_only() -> None:
    """A cursor placed at seq 50 takes the store's next event (60, after a pruned stretch) and goes on from there; a
    live event past a gap the store cannot fill (not stored yet) is held back, never delivered out of order."""
    cursor = FollowCursor(50)
    assert cursor.stored(_ev(60)) and cursor.last == 60
    assert not cursor.stored(_ev(60))
    assert cursor.gap_before(_ev(63)) == 62
    assert not cursor.live(_ev(63)) and cursor.last == 60
    assert cursor.live(_ev(61)) and cursor.gap_before(_ev(62)) is None


def test_the_end_counts_until_the_session_continues() -> None:
    """``ended`` is set by ``session.ended`` and cleared by ``session.continued`` (a resumed session goes on)."""
    cursor = FollowCursor()
    for seq, kind in enumerate(["session.started", "session.ended"], 1):
        cursor.stored(_ev(seq, kind))
    assert cursor.ended
    assert cursor.live(_ev(3, "session.continued")) and not cursor.ended
    assert cursor.live(_ev(4, "output")) and not cursor.ended
    assert not still_ended(False, "output") and still_ended(True, "output")


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 60), first_read=st.integers(0, 60), since=st.integers(0, 10),
       fate=st.lists(st.sampled_from(["keep", "drop", "twice"]), min_size=60, max_size=60))
def test_any_lossy_live_tail_yields_each_event_once_in_order(n: int, first_read: int, since: int,
                                                             fate: list[str]) -> None:
    """Whatever the live tail drops or repeats, and however much the store held at the first read, the follower
    yields the events after ``since`` once each, in order, with no hole, up to the last one it has heard of (a
    tail the live stream never announced is what a quiet follower's periodic store read catches)."""
    store = [_ev(i) for i in range(1, n + 1)]
    live: list[dict[str, Any]] = []
    for ev, f in zip(store, fate, strict=False):
        if f != "drop":
            live.append(ev)
        if f == "twice":
            live.append(ev)
    got = _follow(store, live, since, first_read)
    heard = max([ev["seq"] for ev in live] + [min(first_read, n)])
    assert got == list(range(since + 1, max(heard, since) + 1))


def test_a_published_event_becomes_the_same_dict_as_the_stores() -> None:
    """``event_from_wire`` (per event of every follower) turns the published compact form into the dict the store's
    reads give, field for field: the 8-item form by one dict display, an older 7-item form (no ``src_seq``) too."""
    from labd.ipc.client import WIRE_FIELDS, event_from_wire

    item = [7, 1.5, "custom", "r", "n1", 3, {"name": "tick", "data": [1, None]}, 5]
    assert event_from_wire(item) == {**dict(zip(WIRE_FIELDS, item, strict=True)), "src": "runner"}
    assert list(event_from_wire(item)) == list(WIRE_FIELDS)
    assert event_from_wire([8, 2.0, "session.ended", "d", None, None, {}, 8])["src"] == "daemon"
    old = event_from_wire([9, 2.5, "log", "r", None, None, {"level": "info", "event": "x"}])
    assert old == {"seq": 9, "ts": 2.5, "kind": "log", "src": "runner", "node_id": None, "parent": None,
                   "payload": {"level": "info", "event": "x"}}
