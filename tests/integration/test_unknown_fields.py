"""Requests that act (answer an approval, branch a session) and a field they do not take: refused naming it, never
ignored (a misspelt field was the action done without it)."""

from __future__ import annotations

import pytest

from labd.ipc import LabdError
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(180)


def test_a_resolve_with_a_field_it_does_not_take_answers_nothing(shared_daemon) -> None:
    """``approval.resolve`` with ``feeback`` (for ``feedback``) or ``refuse_kind`` (for ``refuse_kinds``) is
    ``bad_request`` naming the field, and the approval stays pending. Both were ignored: the approval was answered
    without the feedback, or answered whatever kind the client meant to refuse. The right fields still answer it."""
    with shared_daemon.client() as c:
        sid = c.start("labd_testflows:custom_approval")
        pending = wait_until(lambda: c.approvals(session=sid), timeout=60, what="the approval asked for")
        aid = pending[0]["id"]
        for extra, field in [({"feeback": "why red"}, "feeback"), ({"refuse_kind": ["custom"]}, "refuse_kind")]:
            with pytest.raises(LabdError) as err:
                c.request("approval.resolve", session=sid, approval_id=aid, decision="red", **extra)
            assert err.value.code == "bad_request" and repr(field) in err.value.message, err.value
            assert err.value.details == {"field": field}
        assert [a["status"] for a in c.approvals(session=sid, status="all")] == ["pending"]
        c.resolve(sid, "red", feedback="why red", approval_id=aid, by="test")
        assert c.wait(sid, timeout=60)["status"] == "completed"
        assert c.approvals(session=sid, status="all")[0]["feedback"] == "why red"


def test_a_branch_with_a_field_it_does_not_take_starts_nothing(shared_daemon) -> None:
    """``session.branch`` with ``hypotesis`` (for ``hypothesis``) is ``bad_request`` naming it and starts no session:
    it was ignored and the branch ran its steps again without the hypothesis it was for."""
    with shared_daemon.client() as c:
        sid = c.start("planning_and_control", params={"task": "Fit the data"})
        assert c.wait(sid, timeout=120)["status"] == "completed"
        step = next(n["node_id"] for n in c.dag(sid)["dag"]["nodes"] if n["name"].startswith("step 2"))
        before = {s["id"] for s in c.sessions(limit=1000)}
        with pytest.raises(LabdError) as err:
            c.request("session.branch", session=sid, **{"from": step}, hypotesis="the input is in Kelvin")
        assert err.value.code == "bad_request" and "'hypotesis'" in err.value.message, err.value
        assert {s["id"] for s in c.sessions(limit=1000)} == before
        made = c.branch(sid, step, hypothesis="the input is in Kelvin")["sessions"]
        assert c.wait(made[0]["session"], timeout=120)["status"] == "completed"


def test_a_resume_or_replay_with_a_field_it_does_not_take_starts_nothing(shared_daemon) -> None:
    """``session.resume`` of an ended session with ``budgett`` (for ``budget``) and ``session.replay`` with ``form``
    (for ``from``) are ``bad_request`` naming the field; the session stays ended and no session is started. They were
    ignored: the resume went on with no new budget, the replay replayed everything instead of up to the node."""
    with shared_daemon.client() as c:
        sid = c.start("demo.fail")
        assert c.wait(sid, timeout=60)["status"] == "failed"
        before = {s["id"] for s in c.sessions(limit=1000)}
        for kind, body, field in [("session.resume", {"session": sid, "budgett": 5}, "budgett"),
                                  ("session.replay", {"session": sid, "form": "n1"}, "form")]:
            with pytest.raises(LabdError) as err:
                c.request(kind, **body)
            assert err.value.code == "bad_request" and repr(field) in err.value.message, (kind, err.value)
        assert c.session(sid)["status"] == "failed"
        assert {s["id"] for s in c.sessions(limit=1000)} == before
        assert c.wait(c.replay(sid), timeout=60)["status"] == "failed"  # the fields it takes still work


def test_a_read_with_a_misspelt_filter_is_refused_not_answered_unfiltered(shared_daemon) -> None:
    """``events.query`` with ``kind`` (for ``kinds``), ``approvals.list`` with ``sessions`` (for ``session``),
    ``cost.summary`` with ``group`` (for ``by``) and ``skill.list`` with ``name`` (it takes ``search``) are each
    ``bad_request`` naming the field. They were answered as if no filter had been asked for: every event of the
    session read as its output, every session's approvals as one session's. The filters they take still filter."""
    with shared_daemon.client() as c:
        sid = c.start("demo.count", params={"n": 2, "delay": 0})
        assert c.wait(sid, timeout=60)["status"] == "completed"
        for kind, body, field in [("events.query", {"session": sid, "kind": ["output"]}, "kind"),
                                  ("approvals.list", {"sessions": sid}, "sessions"),
                                  ("cost.summary", {"group": "workflow"}, "group"),
                                  ("skill.list", {"name": "x"}, "name")]:
            with pytest.raises(LabdError) as err:
                c.request(kind, **body)
            assert err.value.code == "bad_request" and repr(field) in err.value.message, (kind, err.value)
            assert err.value.details == {"field": field}
        out = c.events(sid, kinds=["output"])["events"]
        assert out and {e["kind"] for e in out} == {"output"}
        assert c.approvals(session=sid, status="all") == []
        assert c.cost_summary(by="workflow")["by"] == "workflow"


def test_stop_kill_pause_and_skill_save_with_a_field_they_do_not_take_do_nothing(shared_daemon) -> None:
    """``session.stop`` with ``grace_s``, ``session.kill`` with ``force``, ``session.pause`` with ``reasn`` and
    ``skill.save`` with ``param`` (for ``parameters``) are ``bad_request`` naming the field: the session runs on, no
    skill is saved. They were ignored: the stop used the default grace, the skill was saved needing no parameter."""
    with shared_daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 60})
        wait_until(lambda: c.session(sid)["status"] == "running", timeout=60, what="the sleeper running")
        for kind, extra, field in [("session.stop", {"grace_s": 0}, "grace_s"), ("session.kill", {"force": True},
                                   "force"), ("session.pause", {"reasn": "later"}, "reasn")]:
            with pytest.raises(LabdError) as err:
                c.request(kind, session=sid, **extra)
            assert err.value.code == "bad_request" and err.value.details == {"field": field}, err.value
        assert c.session(sid)["status"] == "running"
        c.stop(sid, grace=1)
        assert c.wait(sid, timeout=60)["status"] == "cancelled"
        done = c.start("demo.count", params={"n": 1, "delay": 0})
        assert c.wait(done, timeout=60)["status"] == "completed"
        with pytest.raises(LabdError) as err:
            c.request("skill.save", session=done, name="typo-skill", param=["n"])
        assert err.value.code == "bad_request" and err.value.details == {"field": "param"}, err.value
        assert "typo-skill" not in {s["name"] for s in c.request("skill.list")["skills"]}
