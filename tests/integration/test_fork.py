"""A workflow that forks (os.fork, multiprocessing, subprocess with preexec_fn): its children can be killed,
print and log, cannot touch the runner's event path, and end without running the runner's epilogue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import module_home, running_daemon
from tests.integration.stuck import wait_explained


@pytest.fixture(scope="module")
def shared() -> Iterator[Any]:
    """One daemon for the module (each test runs its own session)."""
    with module_home("lfork") as (base, env), running_daemon(base / "home") as d, d.client() as c:
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


def test_children_forked_under_traffic_print_log_and_leave_the_event_path_alone(shared) -> None:
    """Children forked while another thread emits, prints and logs flat out: each child prints and logs
    (as output of the session), its events are dropped (no ``from_child`` event, no child step), it ends
    at once with its own exit code (0 after returning from the workflow function, 5 from sys.exit(5) after
    running its atexit handler, 1 and a traceback after raising), the
    parent's partial stdout line is printed once, and the parent's events are all there, in order, with
    gap-free src_seq."""
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
    assert [c["name"] for c in customs] == ["bg"] * result["emitted"]
    assert [c["data"]["i"] for c in customs] == list(range(result["emitted"]))
    assert not [e for e in events if e["kind"] == "step.started" and "child" in e["payload"].get("name", "")]
    text = "".join(e["payload"]["text"] for e in events if e["kind"] == "output")
    for k in range(n):
        assert f"child {k} prints" in text and f"child {k} logs" in text
    assert text.count("child structlog") == n
    assert all(f"child {k} atexit" in text for k in range(1, n, 3))
    assert all(f"ValueError: child {k} fails" in text for k in range(2, n, 3))
    assert text.count("partial line of the parent") == 1
    assert not [e for e in events if e["kind"] == "event.rejected"]


def test_a_child_can_run_a_step_while_a_parent_thread_held_the_context_lock(shared) -> None:
    """A lock of the runner's context held by a parent thread at fork time does not deadlock the child's
    ctx.step (the child's copies of the runner's locks are re-created); the child's step is not recorded."""
    sid = shared.start("labd_forkflows:fork_while_the_context_is_locked")
    final = wait_explained(shared, sid, timeout=60)
    assert final["status"] == "completed", final["reason"]
    events = list(shared.history(sid))
    assert next(e for e in events if e["kind"] == "session.finished")["payload"]["result"] == 0
    assert [e["payload"]["name"] for e in events if e["kind"] == "step.started"] == ["in the parent"]
    assert "the child's step ran" in "".join(e["payload"]["text"] for e in events if e["kind"] == "output")


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
