"""Human in the loop: durable approvals answered from other processes, feedback, bounded redos, timeouts."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from labd.ipc import LabdError
from tests.conftest import DaemonProc, wait_until


@pytest.fixture
def client(shared_daemon: DaemonProc) -> Iterator[Any]:
    """A client of the module's shared daemon (each test starts and asserts on its own sessions)."""
    with shared_daemon.client() as c:
        yield c


TASK = "Investigate.\n- compute FAIL_UNTIL_HYPOTHESIS values\n- summarise"


def pending(client, sid):
    return wait_until(lambda: client.approvals(sid), timeout=30, what="a pending approval")[0]


def labd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labd", *args], capture_output=True, text=True, timeout=60)


def test_approval_answered_from_another_process_lets_the_workflow_continue(client) -> None:
    """Each checkpoint waits (status waiting_approval) until `labd approve`, run as a separate process,
    answers it; then the session runs on and completes."""
    sid = client.start("hitl", params={"task": "Plain.\n- one\n- two", "max_steps": 2})
    kinds = []
    for _ in range(3):  # after planning, before step 1, before step 2
        ap = pending(client, sid)
        kinds.append(ap["kind"])
        assert client.session(sid)["status"] == "waiting_approval"
        if not kinds[1:]:  # `labd wait` that times out says what the session waits for (it said only "not ended")
            r = labd("wait", sid, "--timeout", "1")
            assert r.returncode != 0 and f"waits for an approval: labd approvals {sid}" in r.stderr, r.stderr
        # the second by the start of its id, as an id is often copied (it was "not pending ... or unknown")
        r = labd("approve", sid, *(["--id", ap["id"][:7]] if len(kinds) == 2 else []))
        assert r.returncode == 0, r.stderr
        wait_until(lambda ap=ap: not client.approvals(sid) or client.approvals(sid)[0]["id"] != ap["id"])
    assert kinds == ["after_planning", "before_step", "before_step"]
    final = client.wait(sid, timeout=60)
    assert final["status"] == "completed"
    resolved = client.approvals(sid, status="resolved")
    assert [a["decision"] for a in resolved] == ["approve"] * 3 and {a["resolved_via"] for a in resolved} == {"client"}
    history = [h for h in client.state_history(sid) if h["node_id"] is None]
    assert [h["to_status"] for h in history].count("waiting_approval") == 3


def test_reject_with_feedback_reaches_the_planner(client) -> None:
    """Rejecting the plan with feedback re-plans; the planner's next request carries the feedback and
    the new plan addresses it."""
    sid = client.start("hitl", params={"task": "Plain.\n- one", "max_steps": 2})
    pending(client, sid)
    client.reject(sid, feedback="XYZZY use the closed formula")
    second = wait_until(lambda: (a := client.approvals(sid)) and a[0]["kind"] == "after_planning" and a[0])
    assert "address feedback: XYZZY use the closed formula" in str(second["context"]["plan"])
    planner_inputs = [e["payload"]["input"] for e in client.history(sid)
                      if e["kind"] == "llm.request" and e["payload"]["agent"] == "planner"]
    assert len(planner_inputs) == 2 and "Feedback: XYZZY use the closed formula" in planner_inputs[1]
    client.stop(sid, grace=1)
    assert client.wait(sid, timeout=30)["status"] == "cancelled"


def test_redo_creates_a_branch_node_and_respects_max_redos(client) -> None:
    """A failing step asks what to do; a redo with a hypothesis re-runs it as a branch node (redo edge)
    that sees the hypothesis; once max_redos is used up, redo is no longer offered nor accepted."""
    sid = client.start("hitl", params={"task": "Go.\n- compute FAIL_ALWAYS values", "max_steps": 1,
                                       "max_redos": 1, "max_retries": 0})
    pending(client, sid)
    client.approve(sid)  # the plan
    wait_until(lambda: (a := client.approvals(sid)) and a[0]["kind"] == "before_step")
    client.approve(sid)  # before step 1
    err = wait_until(lambda: (a := client.approvals(sid)) and a[0]["kind"] == "on_error" and a[0])
    assert "redo" in err["options"]
    client.redo(sid, hypothesis="HYPO-42 maybe the input is wrong")
    err2 = wait_until(lambda: (a := client.approvals(sid)) and a[0]["id"] != err["id"] and a[0])
    assert err2["kind"] == "on_error" and "redo" not in err2["options"]
    with pytest.raises(LabdError) as refused:
        client.redo(sid, hypothesis="one more time")
    assert refused.value.code == "bad_decision"
    client.approve(sid)  # accept the failure and carry on
    assert client.wait(sid, timeout=60)["status"] == "completed"
    dag = client.dag(sid)["dag"]
    original = next(n for n in dag["nodes"] if n["name"].startswith("step 1") and "redo" not in n["name"])
    redo = next(n for n in dag["nodes"] if n["name"].endswith("(redo 1)"))
    assert redo["redo_of"] == original["node_id"] and original["status"] == "failed"
    assert {"src": original["node_id"], "dst": redo["node_id"], "type": "redo"} in dag["edges"]
    engineer_inputs = [e["payload"]["input"] for e in client.history(sid)
                       if e["kind"] == "llm.request" and e["node_id"] in
                       {n["node_id"] for n in dag["nodes"] if n["parent_node"] == redo["node_id"]
                        or any(a["node_id"] == n["parent_node"] and a["parent_node"] == redo["node_id"]
                               for a in dag["nodes"])}]
    assert engineer_inputs and all("Hypothesis: HYPO-42 maybe the input is wrong" in i for i in engineer_inputs)


def test_each_approval_resolves_exactly_once(client) -> None:
    """Two answers to the same request: the first wins, the second gets not_pending."""
    sid = client.start("hitl", params={"task": "Plain.\n- one", "max_steps": 1})
    ap = pending(client, sid)
    client.resolve(sid, "approve", approval_id=ap["id"])
    with pytest.raises(LabdError) as second:
        client.resolve(sid, "reject", approval_id=ap["id"])
    assert second.value.code == "not_pending"
    decided = [e for e in client.history(sid) if e["kind"] == "approval.resolved"
               and e["payload"]["approval_id"] == ap["id"]]
    assert len(decided) == 1 and decided[0]["payload"]["decision"] == "approve"
    client.stop(sid, grace=1)


@pytest.mark.parametrize(("policy", "status"), [("approve", "completed"), ("fail", "failed")])
def test_timeout_policy_applies_to_unanswered_requests(client, policy, status) -> None:
    """Unanswered requests resolve by their policy after the timeout: approve lets the session run to
    the end; fail ends it failed with the reason."""
    sid = client.start("hitl", params={"task": "Plain.\n- one", "max_steps": 1, "approval_timeout": 0.5,
                                       "timeout_policy": policy})
    final = client.wait(sid, timeout=60)
    assert final["status"] == status, final["reason"]
    resolved = client.approvals(sid, status="resolved")
    assert resolved and all(a["resolved_via"] == "timeout" for a in resolved)
    if policy == "fail":
        assert "was not answered within 0.5s (policy: fail)" in final["reason"]


def test_pending_approval_survives_a_daemon_restart(daemon) -> None:
    """A request pending when the daemon is SIGKILLed is still pending after a restart; answering it
    then reaches the waiting runner, which completes."""
    with daemon.client() as c:
        sid = c.start("hitl", params={"task": "Plain.\n- one", "max_steps": 1})
        ap = pending(c, sid)
    daemon.kill9()
    restarted = DaemonProc(daemon.home).start()
    try:
        with restarted.client() as c:
            assert [a["id"] for a in c.approvals(sid)] == [ap["id"]]
            c.approve(sid)
            # before step 1: the runner got the answer and moved on
            wait_until(lambda: (a := c.approvals(sid)) and a[0]["kind"] == "before_step")
            c.approve(sid)
            assert c.wait(sid, timeout=60)["status"] == "completed"
    finally:
        restarted.stop()


def test_pause_and_resume_at_step_boundaries(client) -> None:
    """pause takes effect at the next step boundary (status paused, recorded with who and why);
    resume continues; the session completes."""
    sid = client.start("demo.count", params={"n": 200, "delay": 0.05})  # 10 s: not over before the pause arrives
    wait_until(lambda: client.session(sid)["status"] == "running", timeout=60)
    client.pause(sid)
    wait_until(lambda: client.session(sid)["status"] == "paused", what="paused")
    paused_steps = len(client.session(sid)["steps"])
    assert len(client.session(sid)["steps"]) == paused_steps  # nothing moves while paused
    client.resume(sid)
    assert client.wait(sid, timeout=60)["status"] == "completed"
    history = [(h["to_status"], h["actor"]) for h in client.state_history(sid) if h["node_id"] is None]
    assert ("paused", "client") in history and history.index(("paused", "client")) < len(history) - 1


def test_modify_without_feedback_is_refused_alike_by_every_client(client) -> None:
    """A `modify` with no feedback (none, empty or blank) has nothing to modify: the daemon refuses it with
    `bad_request` naming the feedback, for the SDK and for `labd modify` / `labd resolve` alike (one message, exit
    code 2), and the approval stays pending; with feedback it is answered and the workflow gets the feedback."""
    sid = client.start("labd_testflows:review_once")
    ap = pending(client, sid)
    for feedback in (None, "", "  \n"):
        with pytest.raises(LabdError) as err:
            client.resolve(sid, "modify", feedback=feedback)
        assert err.value.code == "bad_request" and "needs feedback" in str(err.value), err.value
        assert err.value.details == {"field": "feedback"}
    for args in (("modify", sid), ("modify", sid, "--feedback", ""), ("resolve", sid, "modify")):
        r = labd(*args)
        assert r.returncode == 2, (args, r)
        assert r.stderr.startswith("labd: decision 'modify' needs feedback") and "[bad_request]" in r.stderr, r.stderr
    assert [a["id"] for a in client.approvals(sid)] == [ap["id"]]
    r = labd("modify", sid, "--feedback", "use blue")
    assert r.returncode == 0, r.stderr
    assert client.wait(sid, timeout=60)["status"] == "completed"
    assert "decision=modify feedback=use blue" in "".join(
        e["payload"]["text"] for e in client.history(sid) if e["kind"] == "output")


def _approve_until_done(c, sid: str) -> dict:
    """Approve every request of ``sid`` until it ends; its final row."""
    for _ in range(20):
        wait_until(lambda: c.approvals(sid) or c.session(sid)["status"] in ("completed", "failed", "cancelled"),
                   timeout=60, what="the next approval or the end")
        if not c.approvals(sid):
            break
        c.approve(sid)
    return c.wait(sid, timeout=60)


def _planner_calls(c, sid: str) -> int:
    return sum(1 for e in c.history(sid, kinds=["llm.request"]) if e["payload"]["agent"] == "planner")


def test_hitl_resumed_after_its_plan_was_approved_goes_on_without_planning_again(client) -> None:
    """A hitl session stopped while it waits before its first step (its plan approved) is resumed: it goes on to
    completion without planning again; before, the resumed run failed with ``UnboundLocalError`` (the plan and
    its answer were local variables of the skipped planning step)."""
    sid = client.start("hitl", params={"task": "Plain.\n- one\n- two", "max_steps": 2})
    wait_until(lambda: client.approvals(sid), timeout=60, what="the plan's approval")
    client.approve(sid)
    wait_until(lambda: [a for a in client.approvals(sid) if a["kind"] == "before_step"], timeout=60,
               what="the approval before step 1")
    planned = _planner_calls(client, sid)
    client.stop(sid)
    assert client.wait(sid, timeout=60)["status"] == "cancelled"
    client.resume(sid)
    final = _approve_until_done(client, sid)
    assert final["status"] == "completed", final["reason"]
    assert _planner_calls(client, sid) == planned


def test_a_branch_of_hitl_from_its_second_step_reuses_the_first(client) -> None:
    """A branch of a completed hitl session from its second step reuses planning and step 1 (restored, not run
    again, and nobody is asked again whether to run it: the answer is its review node's result) and completes;
    before, it failed with ``UnboundLocalError``, and a completed step whose body was skipped was opened again at
    the next position (run twice, or a divergence)."""
    sid = client.start("hitl", params={"task": "Plain.\n- one\n- two", "max_steps": 2})
    assert _approve_until_done(client, sid)["status"] == "completed"
    step2 = next(n["node_id"] for n in client.dag(sid)["dag"]["nodes"] if n["name"].startswith("step 2:"))
    bid = client.branch(sid, step2, hypothesis="try X")["sessions"][0]["session"]
    final = _approve_until_done(client, bid)
    assert final["status"] == "completed", final["reason"]
    assert _planner_calls(client, bid) == 0
    asked = [a["prompt"] for a in client.approvals(bid, status="all")]
    assert not [p for p in asked if p.startswith("Run step 1:")], asked  # its review is restored: no one is asked
    ends = [(e["payload"]["name"][:7], e["payload"]["status"]) for e in client.history(bid, kinds=["step.finished"])]
    assert ("step 1:", "reused") in ends and ("step 1:", "completed") not in ends
    assert ("step 2:", "completed") in ends


def test_an_approval_id_of_another_session_is_refused_naming_its_session(client) -> None:
    """Answering session A with session B's pending approval id answers nothing and says the approval is B's; it
    said "not pending (already resolved, or unknown)", of an approval that was pending."""
    a, b = (client.start("labd_testflows:review_once") for _ in range(2))
    wait_until(lambda: client.approvals(a) and client.approvals(b), timeout=60, what="both approvals")
    theirs = client.approvals(b)[0]["id"]
    with pytest.raises(LabdError) as refused:
        client.approve(a, approval_id=theirs)
    assert refused.value.code == "not_pending" and f"belongs to session {b}" in refused.value.message
    assert [x["status"] for x in client.approvals(b, status="all")] == ["pending"]
    assert [x["status"] for x in client.approvals(a, status="all")] == ["pending"]
    for sid in (a, b):
        client.approve(sid)
        assert client.wait(sid, timeout=60)["status"] == "completed"
