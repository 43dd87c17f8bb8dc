"""``session.get`` reads only the newest nodes and transitions of a session (store.newest_steps, store.history with
``most``): a days-long session has tens of thousands of nodes, and reading all of them on the daemon's request loop
to keep the newest 2,000 held every other client for more than a second per request (30,000 steps: 1.2 s)."""

from __future__ import annotations

import pytest

from labd.store.queries import Store
from labd.store.writer import BatchWriter
from tests.unit.test_review_replay_scale import _deep_chain
from tests.unit.test_store import CREATED, Batch


def _tree(st: Store, writer: BatchWriter, sid: str) -> None:
    """Phases, each holding steps whose agent turns made LLM calls; a planned step that never started; transitions."""
    b = Batch({})
    b.add(sid, "session.created", {**CREATED, "workdir": f"/w/{sid}"})
    b.add(sid, "step.planned", {"name": "later", "path": "p9"}, src="r", node="planned")
    for p in range(4):
        phase = f"p{p}"
        b.add(sid, "step.started", {"name": phase, "path": phase, "kind": "phase"}, src="r", node=phase)
        for s in range(3):
            step = f"{phase}s{s}"
            b.add(sid, "step.started", {"name": step, "path": step, "parent_node": phase}, src="r", node=step)
            b.add(sid, "agent.turn.started", {"agent": "a", "parent_node": step}, src="r", node=f"{step}t")
            b.add(sid, "cost.recorded", {"agent": "a", "model": "m", "prompt_tokens": p + 1, "completion_tokens": s,
                                         "cost": 0.25, "offline": True}, src="r", node=f"{step}t")
            b.add(sid, "step.finished", {"name": step, "status": "completed", "duration": 0.1}, src="r", node=step)
        b.add(sid, "step.finished", {"name": phase, "status": "completed", "duration": 0.3}, src="r", node=phase)
    b.add(sid, "session.ended", {"ended_by": "runner", "exit_code": 0})
    b.commit(writer)


def _wide(st: Store, writer: BatchWriter, sid: str, n: int) -> None:
    """``n`` steps side by side, each with one LLM call."""
    b = Batch({})
    b.add(sid, "session.created", {**CREATED, "workdir": f"/w/{sid}"})
    for i in range(n):
        b.add(sid, "step.started", {"name": f"s{i}", "path": str(i)}, src="r", node=f"n{i + 1}")
        b.add(sid, "cost.recorded", {"agent": "a", "model": "m", "prompt_tokens": i, "completion_tokens": 1,
                                     "cost": 0.001, "offline": True}, src="r", node=f"n{i + 1}")
    b.commit(writer)


@pytest.mark.parametrize("layout", ["tree", "chain"])
def test_the_newest_nodes_are_the_tail_of_all_of_them_with_the_same_rollups(
        sqlite_store: tuple[Store, BatchWriter], layout: str) -> None:
    """For every count, the newest nodes read alone are exactly the tail of the whole list in start order, each with
    the same LLM roll-up over its subtree (a node's nested nodes start after it, so they are among the newest too),
    and the total counts every node, the planned one included; None reads them all."""
    st, writer = sqlite_store
    if layout == "tree":
        _tree(st, writer, "s")
    else:
        _deep_chain(st, writer, "s", 40)
    every = st.steps("s")
    assert len(every) > 20 and any(n["calls"] > 1 for n in every)
    for most in (1, 2, 5, 13, len(every) - 1, len(every), len(every) + 5):
        newest, total = st.newest_steps("s", most)
        assert total == len(every)
        assert newest == every[-most:], most
    assert st.newest_steps("s", None) == (every, len(every))


def test_the_newest_transitions_are_the_tail_of_the_history(sqlite_store: tuple[Store, BatchWriter]) -> None:
    """``history(most=n)``: the last n state transitions in order; the count is of all of them."""
    st, writer = sqlite_store
    _tree(st, writer, "s")
    every = st.history("s")
    assert len(every) >= 2
    for most in (1, len(every) - 1, len(every), len(every) + 3):
        assert st.history("s", most) == every[-most:]
    assert st.count_history("s") == len(every)


def test_more_newest_nodes_than_one_query_may_name_are_read_too(sqlite_store: tuple[Store, BatchWriter]) -> None:
    """Past 5,000 nodes asked for (``session.get`` takes ``steps_limit`` up to 100,000) the calls are not filtered by
    node id (one bound parameter per node would pass SQLite's limit): the newest nodes still come with their own
    roll-ups, as the whole list has them."""
    st, writer = sqlite_store
    _wide(st, writer, "w", 6100)
    every = st.steps("w")
    for most in (5000, 5001, 6099, 40_000):
        newest, total = st.newest_steps("w", most)
        assert total == 6100 and newest == every[-most:], most
    assert every[-1]["prompt_tokens"] == 6099 and every[-1]["calls"] == 1
