"""The SDK's reading of the live tail's two message forms (labd.ipc.live)."""

from __future__ import annotations

from labd.ipc.live import WIRE_FIELDS, live_events, wire_items


def test_both_forms_decode_to_the_same_events() -> None:
    """A run (``[seq offset, runner events]``) and the per-event form of the same events give the same dicts and
    the same compact items: ``seq = src_seq + offset``, ``src`` the runner's, fields in ``WIRE_FIELDS`` order."""
    runner = [[7, 1.5, "custom", None, None, {"name": "a"}], [8, 2.5, "output", "n1", None, {"text": "é"}]]
    per = [[10, 1.5, "custom", "r", None, None, {"name": "a"}, 7],
           [11, 2.5, "output", "r", "n1", None, {"text": "é"}, 8]]
    run_body = {"session": "s", "run": [3, runner]}
    per_body = {"session": "s", "events": per}
    assert live_events(run_body) == live_events(per_body)
    assert [list(e) for e in live_events(run_body)] == [list(WIRE_FIELDS)] * 2
    assert live_events(run_body)[1] == {"seq": 11, "ts": 2.5, "kind": "output", "src": "runner", "node_id": "n1",
                                        "parent": None, "payload": {"text": "é"}, "src_seq": 8}
    assert wire_items(run_body) == wire_items(per_body) == per


def test_malformed_runs_yield_nothing_rather_than_wrong_events() -> None:
    """A run whose offset is not an integer, or that is not a pair, yields no events (the follower fills from the
    store); an item of the wrong length inside a run is skipped."""
    assert live_events({"run": ["3", [[1, 1.0, "custom", None, None, {}]]]}) == []
    assert live_events({"run": [3]}) == []
    assert wire_items({"run": [True, []]}) == []
    got = live_events({"run": [1, [[1, 1.0, "custom", None, None, {}], [2, 1.0, "custom"]]]})
    assert [e["seq"] for e in got] == [2]
