"""A skill holds at most ``MAX_STEPS`` steps: a session with more completed steps (a long run) is refused naming the
step a skill of its last ``MAX_STEPS`` would start at, and saving from that step works. (It was refused as a plan
"that must be a list of at most 10000 steps", with nothing to say how to save one.)"""

from __future__ import annotations

import pytest

from labd.store import skills
from labd.store.queries import Store
from labd.store.writer import BatchWriter
from tests.unit.test_store import CREATED, Batch


def test_a_session_with_more_steps_than_a_skill_holds_names_where_to_save_from(
        sqlite_store: tuple[Store, BatchWriter], monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight completed steps, a skill of at most five: refused `bad_skill` (field `from_node`), saying how many steps
    the session has and the command with the step to save from (the fourth: its last five); from there the skill
    has five steps; from the seventh, two."""
    st, writer = sqlite_store
    monkeypatch.setattr(skills, "MAX_STEPS", 5)
    b = Batch({})
    b.add("s", "session.created", {**CREATED, "workdir": "/w/s"})
    for i in range(8):
        b.add("s", "step.started", {"name": f"step {i}", "path": str(i)}, src="r", node=f"n{i + 1}")
        b.add("s", "step.finished", {"name": f"step {i}", "status": "completed", "duration": 0.1}, src="r",
              node=f"n{i + 1}")
    b.add("s", "session.finished", {"outcome": "completed", "result": None}, src="r")
    b.add("s", "session.ended", {"ended_by": "runner", "exit_code": 0})
    b.commit(writer)
    session = st.session("s")
    assert session is not None and session["status"] == "completed"
    with pytest.raises(skills.SkillError) as err:
        skills.extract(st, session, name="long")
    e = err.value
    assert (e.code, e.field) == ("bad_skill", "from_node")
    assert e.details == {"steps": 8, "max": 5, "from_node": "n4"}
    assert "session s has 8 completed steps; a skill holds at most 5" in str(e)
    assert "labd skills save s --from n4" in str(e)
    assert [x["name"] for x in skills.extract(st, session, name="long", from_node="n4")["steps"]] == \
        [f"step {i}" for i in range(3, 8)]
    assert len(skills.extract(st, session, name="tail", from_node="n7")["steps"]) == 2
