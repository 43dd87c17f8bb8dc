"""What `labd logs` / `run --follow` print for recorded events (labd.frontends.cli.activity)."""

from __future__ import annotations

from typing import Any

from labd.frontends.cli.activity import Activity


def _texts(ev: dict[str, Any]) -> list[str]:
    return [line.text for line in Activity("s1").lines(ev)]


def test_a_limit_kill_is_worded_as_show_words_it() -> None:
    """A memory kill reads `memory 124 MiB > limit 100 MiB`, as `labd show` says it (it read `124.1M > 100.0M`);
    other units keep theirs."""
    mem = {"seq": 9, "ts": 0.0, "kind": "limit.exceeded", "src": "daemon", "node_id": None, "parent": None,
           "payload": {"limit": "memory", "measured": 130_100_000, "max": 100 * 2**20, "unit": "bytes",
                       "action": "kill"}}
    assert any("== limit exceeded: memory 124 MiB > limit 100 MiB (kill)" in t for t in _texts(mem))
    procs = {**mem, "payload": {"limit": "processes", "measured": 12, "max": 10, "unit": "processes",
                                "action": "kill"}}
    assert any("processes 12 processes > limit 10 processes (kill)" in t for t in _texts(procs))


def test_a_completed_session_whose_result_was_not_recorded_says_so() -> None:
    """`labd run -f` of a workflow whose result was too large to record printed nothing about it; the
    ``session.finished`` of a completed session with an ``error`` gets a line with the reason. A plain completion
    with a result gets none."""
    why = "result not recorded: too large (41,943,146 bytes as an event; one event may take at most 16,777,027 bytes"
    ev = {"seq": 9, "ts": 0.0, "kind": "session.finished", "src": "runner", "node_id": None, "parent": None,
          "payload": {"outcome": "completed", "error": why}}
    assert any(t.startswith("! result not recorded: too large") for t in _texts(ev))
    plain = {**ev, "payload": {"outcome": "completed", "result": 3}}
    assert not any("not recorded" in t for t in _texts(plain))


def test_a_redo_answer_shows_its_hypothesis_as_a_modify_shows_its_feedback() -> None:
    """The line of a resolved approval carries the redo's hypothesis (it showed a modify's feedback, and for a redo
    only ``redo by client``)."""
    ev = {"seq": 9, "ts": 0.0, "kind": "approval.resolved", "src": "daemon", "node_id": None, "parent": None,
          "payload": {"approval_id": "ap-1", "decision": "redo", "by": "client", "hypothesis": "try kelvin"}}
    assert any(t.endswith("redo by client — hypothesis: try kelvin") for t in _texts(ev)), _texts(ev)
    modify = {**ev, "payload": {"approval_id": "ap-1", "decision": "modify", "by": "client", "feedback": "use blue"}}
    assert any(t.endswith("modify by client — use blue") for t in _texts(modify))
