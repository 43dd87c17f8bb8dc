"""Which recorded nodes a resume superseded (labd.store.attempts): what replay and compare leave out of a resumed
session's record, for records with step positions and for records made before steps carried them."""

from __future__ import annotations

from typing import Any

import pytest

from labd.store.attempts import superseded_nodes
from labd.store.queries import Store
from labd.store.writer import BatchWriter
from tests.unit.test_store import CREATED, Batch


def _step(b: Batch, node: str, name: str, path: str | None, status: str, parent: str | None = None) -> None:
    started: dict[str, Any] = {"name": name, "kind": "step", "edges": []}
    if path is not None:
        started["path"] = path
    if parent:
        started["parent_node"] = parent
    b.add("s1", "step.started", started, src="r", node=node)
    b.add("s1", "step.finished", {"name": name, "status": status, "duration": 0.1}, src="r", node=node)


def _turn(b: Batch, node: str, parent: str | None) -> None:
    payload: dict[str, Any] = {"agent": "researcher", "input": "go on"}
    if parent:
        payload["parent_node"] = parent
    b.add("s1", "agent.turn.started", payload, src="r", node=node)
    b.add("s1", "agent.turn.finished", {"agent": "researcher", "status": "completed", "duration": 0.1,
                                        "output": "ok"}, src="r", node=node)


def _record(writer: BatchWriter, positions: bool, cursors: dict[str, Any] | None = None) -> None:
    """Run 1: a top-level agent turn (n1); step "one" completed (n2) with a turn in it (n3); step "two" (n4) with
    a nested step that completed (n5, its turn n6) and a turn of its own (n7), failed. Resumed: the top-level
    turn again (n8), step "two" again (n9) with its own turn (n10); "one" and the nested step were restored."""
    def at(path: str) -> str | None:
        return path if positions else None

    b = Batch({} if cursors is None else cursors)
    b.add("s1", "session.created", CREATED)
    b.add("s1", "session.started", {"pid": 1, "workdir": "/w/s1"}, src="r")
    _turn(b, "n1", None)
    _step(b, "n2", "one", at("0"), "completed")
    _turn(b, "n3", "n2")
    b.add("s1", "step.started", {"name": "two", "kind": "step", "edges": [], **({"path": "1"} if positions else {})},
          src="r", node="n4")
    _step(b, "n5", "inner", at("1/0"), "completed", parent="n4")
    _turn(b, "n6", "n5")
    _turn(b, "n7", "n4")
    b.add("s1", "step.finished", {"name": "two", "status": "failed", "duration": 0.2, "error": "boom"}, src="r",
          node="n4")
    b.add("s1", "session.finished", {"outcome": "failed", "error": "boom"}, src="r")
    b.add("s1", "session.ended", {"ended_by": "runner", "exit_code": 1})
    b.add("s1", "session.continued", {"from_status": "failed", "reason": "again", "by": "client"})
    _turn(b, "n8", None)
    _step(b, "n9", "two", at("1"), "completed")
    _turn(b, "n10", "n9")
    b.commit(writer)


@pytest.mark.parametrize("positions", [True, False], ids=["with positions", "before positions"])
def test_a_resume_supersedes_the_unfinished_step_its_turns_and_the_turns_outside_steps(
        sqlite_store: tuple[Store, BatchWriter], positions: bool) -> None:
    """The failed step that ran again (n4), the turn in it (n7) and the top-level turn before the resume (n1) are
    superseded; the completed step, the completed step nested in the failed one, their turns and everything after
    the resume are kept; a session never resumed has nothing superseded."""
    st, writer = sqlite_store
    _record(writer, positions)
    assert superseded_nodes(st, "s1") == {"n1", "n4", "n7"}
    assert superseded_nodes(st, "nosuch") == set()


def test_a_completed_step_run_again_after_the_resume_is_superseded_when_positions_say_so(
        sqlite_store: tuple[Store, BatchWriter]) -> None:
    """With positions, a step that completed before the resume but ran again at its position (its recorded result
    could not be restored) is superseded too; until it runs again it is kept."""
    st, writer = sqlite_store
    cursors: dict[str, Any] = {}
    _record(writer, True, cursors)
    assert "n2" not in superseded_nodes(st, "s1")
    b = Batch(cursors)
    _step(b, "n11", "one", "0", "completed")
    b.commit(writer)
    assert superseded_nodes(st, "s1") == {"n1", "n2", "n3", "n4", "n7"}
