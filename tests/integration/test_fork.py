"""A workflow that forks (os.fork, multiprocessing, subprocess with preexec_fn): its children can be killed,
print and log, have their events recorded through the runner (never its spool or queue), and end without
running the runner's epilogue."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import module_home, running_daemon
from tests.integration.stuck import wait_explained


@pytest.fixture(scope="module")
def shared() -> Iterator[Any]:
    """One daemon for the module (each test runs its own session)."""
    with module_home("lfork") as (base, env), running_daemon(base / "home") as d, d.client() as c:
        c.test_home = base / "home"  # where the sessions' directories are (a test looks into one)
        yield c


def test_a_child_sigtermed_right_after_fork_dies(shared) -> None:
    """SIGTERM sent to a forked child at once (before an after-fork handler could reset the runner's
    handler) kills it: none of 30 survives. Programs started by subprocess, with or without preexec_fn, do
    not inherit SIGTERM blocked."""
    sid = shared.start("labd_forkflows:sigterm_right_after_fork", params={"children": 30})
    final = wait_explained(shared, sid, timeout=90)
    assert final["status"] == "completed", final["reason"]
    result = next(shared.history(sid, kinds=["session.finished"]))["payload"]["result"]
    assert result == {"survived": 0, "sigterm_blocked": {"plain": False, "preexec_fn": False}}


def test_children_forked_under_traffic_print_log_and_have_their_events_recorded(shared) -> None:
    """Children forked while another thread emits, prints and logs flat out: each child prints and logs
    (as output of the session), its event and its step are recorded (through the runner: one ``from_child``
    event and one ``child step k`` step each, with node ids of its own), it ends at once with its own exit
    code (0 after returning from the workflow function, 5 from sys.exit(5) after running its atexit handler,
    1 and a traceback after raising), the parent's partial stdout line is printed once, and the parent's
    events are all there, in order, with gap-free src_seq."""
    n = 16
    sid = shared.start("labd_forkflows:fork_under_traffic", params={"children": n})
    final = wait_explained(shared, sid, timeout=90)
    assert final["status"] == "completed", final["reason"]
    events = list(shared.history(sid))
    result = next(e for e in events if e["kind"] == "session.finished")["payload"]["result"]
    assert result["codes"] == [(0, 5, 1)[k % 3] for k in range(n)]
    runner = [e for e in events if e["src"] == "runner"]
    assert [e["src_seq"] for e in runner] == list(range(1, len(runner) + 1))
    customs = [e["payload"] for e in events if e["kind"] == "custom"]
    assert [c["data"]["i"] for c in customs if c["name"] == "bg"] == list(range(result["emitted"]))
    assert sorted(c["data"]["k"] for c in customs if c["name"] == "from_child") == list(range(n))
    started = {e["node_id"]: e["payload"]["name"] for e in events if e["kind"] == "step.started"}
    assert sorted(started.values()) == sorted(f"child step {k}" for k in range(n))
    assert len(started) == n  # n distinct node ids
    assert {e["node_id"] for e in events if e["kind"] == "step.finished"} == set(started)
    for node in started:  # f<j>.<i>: j the fork's number in the runner, i the child's own count
        j, _, i = node.partition(".")
        assert j[0] == "f" and j[1:].isdigit() and i == "1"
    assert len({node.partition(".")[0] for node in started}) == n  # each fork its own j
    text = "".join(e["payload"]["text"] for e in events if e["kind"] == "output")
    for k in range(n):
        assert f"child {k} prints" in text and f"child {k} logs" in text
    assert text.count("child structlog") == n
    assert all(f"child {k} atexit" in text for k in range(1, n, 3))
    assert all(f"ValueError: child {k} fails" in text for k in range(2, n, 3))
    assert text.count("partial line of the parent") == 1
    assert not [e for e in events if e["kind"] in ("event.rejected", "log") and e["src"] == "runner"
                and "forked" in str(e["payload"])]
    assert not [e for e in events if e["kind"] == "event.rejected"]


def test_a_child_can_run_a_step_while_a_parent_thread_held_the_context_lock(shared) -> None:
    """A lock of the runner's context held by a parent thread at fork time does not deadlock the child's
    ctx.step (the child's copies of the runner's locks are re-created); the child's step is recorded under a
    node id of its own, and the runner's own node ids do not depend on the fork (its first step is n1: replays
    compare them)."""
    sid = shared.start("labd_forkflows:fork_while_the_context_is_locked")
    final = wait_explained(shared, sid, timeout=60)
    assert final["status"] == "completed", final["reason"]
    events = list(shared.history(sid))
    assert next(e for e in events if e["kind"] == "session.finished")["payload"]["result"] == 0
    started = {e["payload"]["name"]: e["node_id"] for e in events if e["kind"] == "step.started"}
    assert set(started) == {"in the child", "in the parent"}
    assert started["in the child"] == "f1.1" and started["in the parent"] == "n1"
    assert "the child's step ran" in "".join(e["payload"]["text"] for e in events if e["kind"] == "output")


def test_agents_in_pool_workers_are_tracked_like_the_runners_own(shared) -> None:
    """Agents run by the workers of a multiprocessing Pool (fork context) are recorded: each task's step nests
    under the workflow's step, its LLM request and response are both there and the response's ``parent`` is
    its request's ``src_seq`` (the child's reference, mapped by the runner), its cost is recorded; src_seq
    stays gap-free."""
    tasks = 6
    sid = shared.start("labd_forkflows:pool_of_agents", params={"workers": 3, "tasks": tasks})
    final = wait_explained(shared, sid, timeout=120)
    assert final["status"] == "completed", final["reason"]
    events = list(shared.history(sid))
    result = next(e for e in events if e["kind"] == "session.finished")["payload"]["result"]
    assert [r["i"] for r in result] == list(range(tasks)) and all(r["answered"] for r in result)
    runner = [e for e in events if e["src"] == "runner"]
    assert [e["src_seq"] for e in runner] == list(range(1, len(runner) + 1))
    steps = {e["payload"]["name"]: e for e in events if e["kind"] == "step.started"}
    fan_out = steps["fan out"]["node_id"]
    for i in range(tasks):
        assert steps[f"worker {i}"]["payload"]["parent_node"] == fan_out
    order = {(e["kind"], e["node_id"]): i for i, e in enumerate(events)}
    for i in range(tasks):  # the step that waited for its workers finishes after their events
        assert order[("step.finished", steps[f"worker {i}"]["node_id"])] < order[("step.finished", fan_out)]
    by_src = {e["src_seq"]: e for e in runner}
    requests = [e for e in events if e["kind"] == "llm.request"]
    responses = [e for e in events if e["kind"] == "llm.response"]
    assert len(requests) == len(responses) == tasks
    for resp in responses:
        assert by_src[resp["parent"]]["kind"] == "llm.request"
        assert by_src[resp["parent"]]["payload"]["agent"] == resp["payload"]["agent"]
    assert sorted(e["payload"]["agent"] for e in events if e["kind"] == "cost.recorded") == \
        sorted(f"agent{i}" for i in range(tasks))
    assert len({e["payload"]["data"]["pid"] for e in events if e["kind"] == "custom"}) >= 1


def test_a_childs_event_larger_than_one_message_is_recorded_whole(shared) -> None:
    """An event of 5,000,000 characters from a forked child (more than the relay socket carries in one message)
    arrives whole and before the child's next event; the file it went through is gone."""
    sid = shared.start("labd_forkflows:child_large_event", params={"size": 5_000_000})
    final = wait_explained(shared, sid, timeout=60)
    assert final["status"] == "completed", final["reason"]
    events = list(shared.history(sid))
    names = [e["payload"]["name"] for e in events if e["kind"] == "custom"]
    assert names == ["big", "after_big"]
    big = next(e for e in events if e["kind"] == "custom")["payload"]["data"]["text"]
    assert big == "y" * 5_000_000
    session_dir = shared.test_home / "sessions" / sid
    assert not list(session_dir.glob(".forked-*"))


def test_a_child_asking_for_an_approval_or_to_pause_gets_an_error_at_once(shared) -> None:
    """An approval asked from a forked child, or a pause (a budget's) in one — whose answer or resume could not
    reach it — fails at once with a clear error instead of waiting for ever; nothing is left pending."""
    sid = shared.start("labd_forkflows:child_asks_for_approval")
    final = wait_explained(shared, sid, timeout=60)
    assert final["status"] == "completed", final["reason"]
    events = list(shared.history(sid))
    assert next(e for e in events if e["kind"] == "session.finished")["payload"]["result"] == 3
    text = "".join(e["payload"]["text"] for e in events if e["kind"] == "output")
    assert "child got: an approval cannot be asked from a process the workflow forked" in text
    assert "child pausing got: cannot pause (budget: over) in a process the workflow forked" in text
    assert not [e for e in events if e["kind"] in ("approval.requested", "session.paused")]


def test_a_child_left_running_does_not_hold_up_the_end_of_the_session(shared) -> None:
    """A forked child still running when the workflow returns: what it sent before is recorded (before
    ``session.finished``), and the session ends without waiting for the child (it sleeps 60 s)."""
    sid = shared.start("labd_forkflows:child_outlives_the_workflow")
    final = wait_explained(shared, sid, timeout=30)
    assert final["status"] == "completed", final["reason"]
    events = list(shared.history(sid))
    kinds = [e["payload"]["name"] if e["kind"] == "custom" else e["kind"] for e in events]
    assert "early" in kinds and "late" not in kinds
    assert kinds.index("early") < kinds.index("session.finished")
    pid = next(e for e in events if e["kind"] == "session.finished")["payload"]["result"]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_an_overrun_deadline_reports_the_stacks_of_the_session(shared) -> None:
    """wait_explained fails with the session's process tree (threads, wait channels, signal masks, and
    Python stacks when py-spy is there) instead of a bare timeout."""
    sid = shared.start("demo.sleep", params={"seconds": 60})
    with pytest.raises(AssertionError) as err:
        wait_explained(shared, sid, timeout=2)
    shared.stop(sid, grace=1)
    msg = str(err.value)
    assert "did not end within 2s" in msg and "=== pid" in msg and "SigBlk" in msg and "wchan=" in msg
    if "py-spy not installed" not in msg:  # thread names are Python's: only py-spy's stacks show them
        assert "run_session" in msg and "labd-channel" in msg


def test_a_resumed_runner_numbers_its_forks_after_the_record(shared, tmp_path) -> None:
    """A resumed session's runner starts its fork numbers after those its record holds: the child forked again
    by the step that runs again gets node ids of a new fork number (``f3.``), not the first run's ``f1.`` (which
    the first step's child, skipped on resume, already holds). Every step node of the session is distinct."""
    c = shared
    sid = c.start("labd_forkflows:fork_in_steps_fail_once", params={"flag": str(tmp_path / "flag")})
    assert c.wait(sid, timeout=60)["status"] == "failed"
    c.resume(sid, reason="again")
    c.wait(sid, timeout=60)
    assert c.session(sid)["status"] == "completed"
    started = [(e["payload"]["name"], e["node_id"]) for e in c.history(sid, kinds=["step.started"])]
    children = [(name, node.split(".")[0]) for name, node in started if name.startswith("child of")]
    assert children == [("child of first", "f1"), ("child of second", "f2"), ("child of second", "f3")]
    nodes = [node for _, node in started]
    assert len(nodes) == len(set(nodes))
