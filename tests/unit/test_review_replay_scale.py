"""Replay seeds and comparisons of large or crafted records stay linear and never recurse without bound: both run on
the daemon's request loop (daemon/control.py), so a request that takes minutes holds every client hostage, and an
exception answers ``internal`` for a session anyone can still read."""

from __future__ import annotations

from typing import Any

import pytest

from labd.store import compare as compare_mod
from labd.store.attempts import superseded_nodes
from labd.store.lineage import replay_seed
from labd.store.queries import Store
from labd.store.writer import BatchWriter
from tests.unit.test_store import CREATED, Batch


class _Counting(Store):
    """A store that counts how often each session's nodes are read."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner.engine)
        self.reads: dict[str, int] = {}

    def steps(self, session_id: str) -> list[dict[str, Any]]:
        self.reads[session_id] = self.reads.get(session_id, 0) + 1
        return super().steps(session_id)


def test_a_branch_seed_reads_its_parents_nodes_once_not_once_per_reused_step(
        sqlite_store: tuple[Store, BatchWriter]) -> None:
    """The replay seed of a branch that reused N steps reads its parent's nodes a bounded number of times: it used to
    walk the parent's whole DAG once per reused step (store.subtree per root), N full reads of N rows, which took 9 s
    at 800 steps and minutes at a few thousand, on the daemon's request loop. Same seed content either way."""
    st, writer = sqlite_store
    n = 300
    b = Batch({})
    b.add("p1", "session.created", {**CREATED, "workdir": "/w/p1"})
    for i in range(n):
        b.add("p1", "step.started", {"name": f"s{i}", "path": str(i)}, src="r", node=f"n{i + 1}")
        b.add("p1", "agent.turn.started", {"agent": "a", "parent_node": f"n{i + 1}"}, src="r", node=f"t{i + 1}")
        b.add("p1", "step.finished", {"name": f"s{i}", "status": "completed", "duration": 0.1}, src="r",
              node=f"n{i + 1}")
    b.add("p1", "session.ended", {"ended_by": "runner", "exit_code": 0})
    b.add("b1", "session.created", {**CREATED, "workdir": "/w/b1", "parent_id": "p1", "origin": "branch"})
    for i in range(n):
        b.add("b1", "step.started", {"name": f"s{i}", "path": str(i)}, src="r", node=f"n{i + 1}")
        b.add("b1", "step.finished", {"name": f"s{i}", "status": "reused", "duration": 0.0}, src="r",
              node=f"n{i + 1}")
    b.add("b1", "session.ended", {"ended_by": "runner", "exit_code": 0})
    b.commit(writer)
    counting = _Counting(st)
    seed = replay_seed(counting, counting.session("b1"))
    assert len(seed["step_paths"]) == n
    assert counting.reads.get("p1", 0) <= 2, counting.reads


def test_superseded_nodes_of_a_deep_chain_of_steps_without_positions_does_not_recurse(
        sqlite_store: tuple[Store, BatchWriter]) -> None:
    """A resumed record whose steps without a position nest 3000 deep (a runner's events are the session code's to
    craft), read deepest first (node ids sort that way), is decided without a RecursionError: each such step is
    decided by the nearest enclosing step with a position (here one run again, so all of them are superseded)."""
    st, writer = sqlite_store
    n = 3000
    b = Batch({})
    b.add("s1", "session.created", CREATED)
    b.add("s1", "step.started", {"name": "top", "path": "0"}, src="r", node="x")
    for i in reversed(range(n)):  # c000000 is the deepest and sorts first
        parent = "x" if i == n - 1 else f"c{i + 1:06d}"
        b.add("s1", "step.started", {"name": f"s{i}", "parent_node": parent}, src="r", node=f"c{i:06d}")
    b.add("s1", "session.ended", {"ended_by": "runner", "exit_code": 1})
    b.add("s1", "session.continued", {"from_status": "failed", "reason": "again", "by": "client"})
    b.add("s1", "step.started", {"name": "top", "path": "0"}, src="r", node="y")
    b.commit(writer)
    gone = superseded_nodes(st, "s1")
    assert len(gone) == n + 1 and "x" in gone and "c000000" in gone and "y" not in gone


def test_compare_orders_tens_of_thousands_of_steps_first_seen_first(sqlite_store: tuple[Store, BatchWriter],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """compare of two 40,000-step sessions lists every step key once, in the order the first session has them, then
    those only the second has, absent cells as None. (It kept the keys with a list's ``in``, quadratic: 20 s for two
    sessions of 30,000 steps on the daemon's request loop; now a dict. Speed is not asserted here: no timing
    thresholds in tests.)"""
    st, writer = sqlite_store
    b = Batch({})
    b.add("s1", "session.created", CREATED)
    b.add("s2", "session.created", {**CREATED, "workdir": "/w/s2"})
    b.commit(writer)
    n = 40_000
    cell = {"node_id": "n", "kind": "step", "status": "completed", "duration": 0.1, "calls": 0, "prompt_tokens": 0,
            "completion_tokens": 0, "cost": 0.0, "result": None}
    per = {"s1": [(f"s{i}", cell) for i in range(n)], "s2": [(f"s{i}", cell) for i in range(n, -1, -1)]}
    monkeypatch.setattr(compare_mod, "_steps", lambda runs, sid: (per[sid], 0))
    out = compare_mod.compare(st, [st.session("s1"), st.session("s2")])
    assert [r["name"] for r in out["steps"]] == [f"s{i}" for i in range(n + 1)]
    assert out["steps"][-1]["sessions"][0] is None


def _deep_chain(st: Store, writer: BatchWriter, sid: str, depth: int, *, cycle: bool = False) -> None:
    """A finished session whose steps nest ``depth`` deep (each in the one before), an LLM call recorded on every
    step and an agent turn with an output at the bottom; with ``cycle``, two more steps that name each other as
    parent (a malformed record)."""
    b = Batch({})
    b.add(sid, "session.created", {**CREATED, "workdir": f"/w/{sid}"})
    parent = None
    for i in range(depth):
        node = f"n{i + 1}"
        b.add(sid, "step.started", {"name": f"s{i}", "path": str(i), "parent_node": parent}, src="r", node=node)
        b.add(sid, "cost.recorded", {"agent": "a", "model": "m", "prompt_tokens": 1, "completion_tokens": 2,
                                     "cost": 0.5, "offline": True}, src="r", node=node)
        parent = node
    b.add(sid, "agent.turn.started", {"agent": "a", "parent_node": parent}, src="r", node="bottom")
    b.add(sid, "agent.turn.finished", {"agent": "a", "status": "completed", "duration": 0.1,
                                       "output": "deepest answer"}, src="r", node="bottom")
    if cycle:
        b.add(sid, "step.started", {"name": "c1", "path": "c1", "parent_node": "c2"}, src="r", node="c1")
        b.add(sid, "step.started", {"name": "c2", "path": "c2", "parent_node": "c1"}, src="r", node="c2")
        b.add(sid, "cost.recorded", {"agent": "a", "model": "m", "prompt_tokens": 7, "completion_tokens": 0,
                                     "cost": 1.0, "offline": True}, src="r", node="c1")
        b.add(sid, "step.started", {"name": "c3", "path": "c3", "parent_node": "c1"}, src="r", node="c3")
        b.add(sid, "agent.turn.started", {"agent": "a", "parent_node": "c3"}, src="r", node="c4")
        b.add(sid, "cost.recorded", {"agent": "a", "model": "m", "prompt_tokens": 3, "completion_tokens": 0,
                                     "cost": 1.0, "offline": True}, src="r", node="c4")
        b.add(sid, "agent.turn.finished", {"agent": "a", "status": "completed", "duration": 0.1,
                                           "output": "below the cycle"}, src="r", node="c4")
    for i in reversed(range(depth)):
        b.add(sid, "step.finished", {"name": f"s{i}", "status": "completed", "duration": 0.1}, src="r",
              node=f"n{i + 1}")
    b.add(sid, "session.ended", {"ended_by": "runner", "exit_code": 0})
    b.commit(writer)


@pytest.mark.timeout(120)
def test_usage_rollup_and_compare_of_a_very_deep_chain_of_steps_take_one_pass(
        sqlite_store: tuple[Store, BatchWriter]) -> None:
    """A session whose steps nest 20,000 deep (a recursive workflow): each step's LLM usage counts every call in its
    subtree, and compare's result for the outermost step is the output of the deepest agent turn. Both walked
    every node's ancestors or subtree, quadratic in the depth: a 3000-deep chain took ~20 s and this one would take
    the better part of an hour (the timeout fails it); one pass, children first, is linear."""
    st, writer = sqlite_store
    depth = 20_000
    _deep_chain(st, writer, "d1", depth)
    steps = {n["node_id"]: n for n in st.steps("d1")}
    assert steps["n1"]["calls"] == depth and steps["n1"]["prompt_tokens"] == depth
    assert steps["n1"]["completion_tokens"] == 2 * depth and steps["n1"]["cost"] == pytest.approx(0.5 * depth)
    assert steps[f"n{depth}"]["calls"] == 1 and steps["n100"]["calls"] == depth - 99
    result = compare_mod.compare(st, [st.session("d1"), st.session("d1")])  # against itself: one record to write
    first = next(r for r in result["steps"] if r["name"] == "s0")
    assert [v["result"] for v in first["sessions"]] == ["deepest answer", "deepest answer"]


def test_a_parent_cycle_neither_hangs_nor_adds_usage_twice(sqlite_store: tuple[Store, BatchWriter]) -> None:
    """Two steps that name each other as parent (a malformed record), with a step and an agent turn below one of
    them: the roll-up and the comparison end; the steps below the cycle roll up as anywhere else and the cycle's
    first step counts them once, its other step only its own; the well-formed chain is untouched by them (the
    subtree walk of compare looped on such a cycle for ever; found by a review: the steps below it lost their
    roll-up)."""
    st, writer = sqlite_store
    _deep_chain(st, writer, "c", 3, cycle=True)
    _deep_chain(st, writer, "d", 3)
    steps = {n["node_id"]: n for n in st.steps("c")}
    assert steps["c3"]["calls"] == 1 and steps["c3"]["prompt_tokens"] == 3
    assert steps["c1"]["calls"] == 2 and steps["c1"]["prompt_tokens"] == 10
    assert steps["c2"]["calls"] == 0
    assert steps["n1"]["calls"] == 3
    result = compare_mod.compare(st, [st.session("c"), st.session("d")])
    rows = {r["name"]: r for r in result["steps"]}
    assert set(rows) >= {"s0", "c1", "c2", "c3"}
    assert rows["c3"]["sessions"][0]["result"] == "below the cycle"
    assert rows["c1"]["sessions"][0]["result"] == "below the cycle"


def test_compare_takes_the_outer_agent_turn_when_start_positions_tie(monkeypatch: pytest.MonkeyPatch) -> None:
    """Of two nested agent turns recorded with the same start position (or none), a step's result is the outer
    turn's output, as the walk from the step found it first before the one-pass version (found by a review)."""
    from labd.store.compare import _Runs, _steps

    class Rows:
        def steps(self, sid: str) -> list[dict[str, Any]]:
            base = {"status": "completed", "duration": 0.1, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                    "cost": 0.0, "error": None}
            return [{**base, "node_id": "s", "name": "s", "kind": "step", "parent_node": None, "start_seq": 1},
                    {**base, "node_id": "outer", "name": "a", "kind": "agent", "parent_node": "s", "start_seq": None},
                    {**base, "node_id": "inner", "name": "a", "kind": "agent", "parent_node": "outer",
                     "start_seq": None}]

    monkeypatch.setattr(compare_mod, "superseded_nodes", lambda *a: set())  # a store of steps only: never resumed
    per, _ = _steps(_Runs(Rows(), [{"id": "x"}], {"x": {"outer": "outer-out", "inner": "inner-out"}}), "x")
    assert dict(per)["s"]["result"] == "outer-out"
