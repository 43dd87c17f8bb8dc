"""Unit tests for labd.runner.context.Context: steps as DAG nodes, custom events and cancellation."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from labd.runner.context import Cancelled, Context, current_node


class Recorder:
    """Stands in for the channel's emit: records (kind, payload, node_id)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None]] = []
        self._seq = 0

    def __call__(self, kind: str, payload: dict[str, Any], node_id: str | None = None, parent: Any = None) -> int:
        self.events.append((kind, payload, node_id))
        self._seq += 1
        return self._seq

    def kinds(self) -> list[tuple[str, str | None]]:
        return [(k, n) for k, _, n in self.events]

    def finished(self) -> list[dict[str, Any]]:
        return [p for k, p, _ in self.events if k == "step.finished"]


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def ctx(rec: Recorder, tmp_path: Path) -> Context:
    return Context("sess1", tmp_path, {"n": 3}, rec, log=None, secrets={"API_KEY": "sk-1"})


def test_step_emits_started_and_finished_with_a_node_id(ctx: Context, rec: Recorder) -> None:
    """A step emits step.started then step.finished (completed, with a duration) under one new node id."""
    with ctx.step("train") as node:
        assert node.name == "train" and node.id == "n1"
    assert rec.kinds() == [("step.started", "n1"), ("step.finished", "n1")]
    started, finished = rec.events[0][1], rec.events[1][1]
    assert started["name"] == "train"
    assert finished["name"] == "train" and finished["status"] == "completed"
    assert finished["duration"] >= 0 and "error" not in finished


def test_node_ids_are_unique_per_context(ctx: Context, rec: Recorder) -> None:
    """Sequential steps get distinct, increasing node ids."""
    for name in ("a", "b", "c"):
        with ctx.step(name):
            pass
    assert [n for k, n in rec.kinds() if k == "step.started"] == ["n1", "n2", "n3"]


def test_nested_steps_and_event_attribution(ctx: Context, rec: Recorder) -> None:
    """Inner steps name their parent node; custom events go to the innermost open step; nodes are restored."""
    assert current_node.get() is None and ctx.active_node is None
    with ctx.step("outer"):
        ctx.emit("a", 1)
        with ctx.step("inner"):
            assert ctx.active_node == "n2"
            ctx.emit("b", {"x": 2})
        assert ctx.active_node == "n1"
        ctx.emit("c")
    ctx.emit("d")
    assert rec.kinds() == [("step.started", "n1"), ("custom", "n1"), ("step.started", "n2"), ("custom", "n2"),
                           ("step.finished", "n2"), ("custom", "n1"), ("step.finished", "n1"), ("custom", None)]
    assert rec.events[2][1].get("parent_node") == "n1"
    assert rec.events[0][1].get("parent_node") is None
    assert [p for k, p, _ in rec.events if k == "custom"] == [
        {"name": "a", "data": 1}, {"name": "b", "data": {"x": 2}}, {"name": "c", "data": None},
        {"name": "d", "data": None}]
    assert current_node.get() is None and ctx.active_node is None


def test_failed_step_reports_the_error_and_reraises(ctx: Context, rec: Recorder) -> None:
    """An exception in a step marks it failed with 'Type: message' and propagates unchanged."""
    with pytest.raises(ValueError, match="bad value"), ctx.step("parse"):
        raise ValueError("bad value")
    (fin,) = rec.finished()
    assert fin["status"] == "failed" and fin["error"] == "ValueError: bad value"
    assert current_node.get() is None and ctx.active_node is None


def test_failure_in_inner_step_fails_both_steps(ctx: Context, rec: Recorder) -> None:
    """An exception escaping an inner step fails the inner and then the outer step."""
    with pytest.raises(KeyError), ctx.step("outer"), ctx.step("inner"):
        raise KeyError("k")
    assert [(p["name"], p["status"]) for p in rec.finished()] == [("inner", "failed"), ("outer", "failed")]


def test_cancel_inside_a_step_marks_it_cancelled(ctx: Context, rec: Recorder) -> None:
    """check_cancelled after request_cancel raises Cancelled; the step finishes 'cancelled' with the reason."""
    with pytest.raises(Cancelled, match="stopped by user"), ctx.step("work"):
        ctx.request_cancel("stopped by user")
        assert ctx.cancelled
        ctx.check_cancelled()
        pytest.fail("check_cancelled did not raise")
    (fin,) = rec.finished()
    assert fin["status"] == "cancelled" and fin["error"] == "stopped by user"


def test_step_entry_after_cancel_raises_before_emitting(ctx: Context, rec: Recorder) -> None:
    """Opening a step after a stop request raises Cancelled and emits nothing."""
    ctx.request_cancel("stop")
    with pytest.raises(Cancelled), ctx.step("never"):
        pytest.fail("step body ran")
    assert rec.events == []


def test_cancel_during_a_completed_step_raises_at_its_end(ctx: Context, rec: Recorder) -> None:
    """A step whose body finishes after a stop request is recorded as completed, then Cancelled is raised."""
    with pytest.raises(Cancelled), ctx.step("work"):
        ctx.request_cancel("stop")
    (fin,) = rec.finished()
    assert fin["status"] == "completed"


def test_check_cancelled_is_quiet_without_a_request(ctx: Context) -> None:
    """Without a stop request, check_cancelled does nothing and sleep just sleeps."""
    ctx.check_cancelled()
    t0 = time.monotonic()
    ctx.sleep(0.01)
    assert time.monotonic() - t0 >= 0.009
    assert not ctx.cancelled


def test_sleep_raises_immediately_when_already_cancelled(ctx: Context) -> None:
    """sleep() after a stop request raises Cancelled with the reason without waiting."""
    ctx.request_cancel("limit reached")
    t0 = time.monotonic()
    with pytest.raises(Cancelled, match="limit reached"):
        ctx.sleep(60)
    assert time.monotonic() - t0 < 1


def test_sleep_wakes_up_when_cancelled_from_another_thread(ctx: Context) -> None:
    """A long sleep ends promptly with Cancelled when another thread requests a stop."""
    started = threading.Event()

    def stopper() -> None:
        started.wait(5)
        ctx.request_cancel("stop from channel")

    t = threading.Thread(target=stopper)
    t.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(Cancelled, match="stop from channel"):
            started.set()
            ctx.sleep(30)
    finally:
        t.join(5)
    assert time.monotonic() - t0 < 5


def test_cancelled_is_not_caught_by_except_exception(ctx: Context) -> None:
    """Cancelled is a BaseException: a workflow's `except Exception` does not swallow it."""
    assert not issubclass(Cancelled, Exception)
    ctx.request_cancel("stop")
    swallowed = False
    with pytest.raises(Cancelled):
        try:
            ctx.check_cancelled()
        except Exception:
            swallowed = True
    assert not swallowed


def test_step_in_a_worker_thread_does_not_move_the_main_active_node(ctx: Context, rec: Recorder) -> None:
    """Steps opened on another thread are attributed there, leaving the main thread's active node alone."""
    seen: list[Any] = []

    def work() -> None:
        with ctx.step("bg"):
            seen.append((current_node.get(), ctx.active_node))

    with ctx.step("main"):
        t = threading.Thread(target=work)
        t.start()
        t.join(5)
        assert ctx.active_node == "n1"
    assert seen == [("n2", "n1")]


def test_params_are_read_only_and_secrets_are_available(ctx: Context) -> None:
    """ctx.params cannot be modified; ctx.secret() returns withheld secrets, None for unknown names."""
    assert ctx.params["n"] == 3
    with pytest.raises(TypeError):
        ctx.params["n"] = 4  # type: ignore[index]
    assert ctx.secret("API_KEY") == "sk-1" and ctx.secret("NOPE") is None
    assert ctx.session_id == "sess1"


def test_before_boundary_runs_around_each_step(ctx: Context, rec: Recorder) -> None:
    """The before_boundary hook (output drain) runs before step.started and before step.finished."""
    calls: list[int] = []
    ctx.before_boundary = lambda: calls.append(len(rec.events))
    with ctx.step("s"):
        pass
    assert calls == [0, 1]


def test_a_huge_step_name_is_cut_the_same_way_every_time(ctx: Context, rec: Recorder) -> None:
    """A step (planned, run or skipped) named with 2 MB of text is recorded with its first MAX_STEP_NAME characters
    and how much was cut, and a 2 MB error or skip reason with its first MAX_STEP_ERROR (one such name made every
    reply about the session too large to send, found by an attack review); the cut is deterministic, so a
    resumed run's step still matches its record; ordinary names are untouched."""
    from labd.runner.context import MAX_STEP_ERROR, MAX_STEP_NAME

    huge = "x" * 2_000_000
    with ctx.step(huge):
        pass
    ctx.plan([huge, "short"])
    ctx.skip(huge, huge)
    with pytest.raises(ValueError), ctx.step("boom"):
        raise ValueError(huge)
    names = [p["name"] for k, p, _ in rec.events if k in ("step.started", "step.finished", "step.planned")]
    expected = "x" * MAX_STEP_NAME + f"… ({2_000_000 - MAX_STEP_NAME} more)"
    assert names == [expected, expected, expected, "short", expected, expected, "boom", "boom"]
    errors = [p["error"] for k, p, _ in rec.events if k == "step.finished" and p.get("error")]
    assert [len(e) for e in errors] == [MAX_STEP_ERROR + len(f"… ({2_000_000 - MAX_STEP_ERROR} more)"),
                                        MAX_STEP_ERROR + len(f"… ({2_000_012 - MAX_STEP_ERROR} more)")]
