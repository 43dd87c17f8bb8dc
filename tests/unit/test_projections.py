"""Unit tests for store.projections: session status transitions, state history and final reasons."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from labd.store.projections import MAX_REASON, RowChanges, SessionCursor, apply, finalize

MiB = 2**20

CREATED = {"workflow": "demo.count", "name": "s1", "params": {"n": 2}, "limits": {}, "workdir": "/w/s1"}


class Feed:
    """Feeds synthetic events through apply() with increasing seq and ts."""

    def __init__(self, sid: str = "s1") -> None:
        self.cur = SessionCursor(id=sid)
        self.out = RowChanges()
        self.seq = 0

    def __call__(self, kind: str, payload: dict[str, Any] | None = None, src: str = "d",
                 node: str | None = None) -> dict[str, Any]:
        self.seq += 1
        p = dict(payload or {})
        apply(self.cur, self.seq, 1000.0 + self.seq, kind, src, node, p, self.out)
        return p

    def session_history(self) -> list[tuple[str | None, str]]:
        """(from, to) of the session's own transitions (step rows, if recorded, carry a node_id)."""
        return [(h["from_status"], h["to_status"]) for h in self.out.history if h.get("node_id") is None]

    def started(self) -> Feed:
        self("session.created", CREATED)
        self("session.launched", {"pid": 4242, "create_time": 1.0, "launcher": "template"})
        self("session.started", {"pid": 4242, "workdir": "/w/s1"}, src="r")
        return self


def test_happy_path_status_transitions_and_history() -> None:
    """created -> starting -> running -> completed, each recorded once with seq, reason and actor."""
    f = Feed().started()
    f("session.finished", {"outcome": "completed", "result": 2}, src="r")
    ended = f("session.ended", {"ended_by": "runner", "exit_code": 0})
    assert f.cur.status == "completed" and f.cur.terminal
    assert ended["status"] == "completed" and ended["reason"] == "completed"  # completed in place
    assert f.session_history() == [(None, "created"), ("created", "starting"), ("starting", "running"),
                                   ("running", "completed")]
    hist = [h for h in f.out.history if h.get("node_id") is None]
    assert [h["seq"] for h in hist] == [1, 2, 3, 5]
    assert [h["actor"] for h in hist] == ["client", "daemon", "runner", "daemon"]
    assert hist[1]["reason"] == "launched pid 4242" and hist[2]["reason"] == "runner started"
    assert f.out.session_updates["s1"]["status"] == "completed"
    assert f.out.session_updates["s1"]["pid"] == 4242 and f.out.session_updates["s1"]["outcome"] == "completed"
    assert f.cur.last_seq == 5


def test_session_created_inserts_the_row() -> None:
    """session.created inserts a 'created' row with JSON-encoded params and limits."""
    f = Feed()
    f("session.created", CREATED)
    (row,) = f.out.session_inserts
    assert row["id"] == "s1" and row["status"] == "created" and row["name"] == "s1"
    assert row["params"] == '{"n":2}' and row["limits"] == "{}" and row["created_at"] == 1001.0


def test_terminal_status_is_sticky() -> None:
    """After a terminal status, later lifecycle events change neither the status nor the history."""
    f = Feed().started()
    f("session.ended", {"ended_by": "monitor", "status": "lost", "reason": "gone"})
    before = list(f.out.history)
    f("session.started", {"pid": 1, "workdir": "/w"}, src="r")
    f("session.launched", {"pid": 1, "create_time": 1.0, "launcher": "x"})
    f("session.ended", {"ended_by": "runner", "status": "completed", "reason": "late"})
    assert f.cur.status == "lost"
    assert f.session_history() == [(h["from_status"], h["to_status"]) for h in before
                                   if h.get("node_id") is None]
    assert f.out.session_updates["s1"]["status"] == "lost" and f.out.session_updates["s1"]["reason"] == "gone"


def test_runner_started_before_launched_is_running_and_stays_so() -> None:
    """A runner 'started' stored before the daemon's 'launched' moves created -> running; the late
    'launched' (running -> starting is not allowed) is ignored, so the session does not go backwards."""
    f = Feed()
    f("session.created", CREATED)
    f("session.started", {"pid": 1, "workdir": "/w"}, src="r")
    assert f.cur.status == "running"
    f("session.launched", {"pid": 1, "create_time": 1.0, "launcher": "x"})
    assert f.cur.status == "running"
    assert f.session_history() == [(None, "created"), ("created", "running")]


def test_invalid_transition_is_ignored() -> None:
    """A pause request on a session that has ended changes nothing: terminal statuses are sticky."""
    f = Feed()
    f("session.created", CREATED)
    f("session.ended", {"ended_by": "launch", "status": "failed", "reason": "launch failed"})
    f("session.paused", {"by": "client", "reason": "x"}, src="r")
    assert f.cur.status == "failed"
    assert f.session_history() == [(None, "created"), ("created", "failed")]


def test_repeated_status_is_not_a_transition() -> None:
    """A second launch event does not add a starting -> starting history row."""
    f = Feed()
    f("session.created", CREATED)
    f("session.launched", {"pid": 1, "create_time": 1.0, "launcher": "x"})
    f("session.launched", {"pid": 2, "create_time": 2.0, "launcher": "x"})
    assert f.session_history() == [(None, "created"), ("created", "starting")]


def test_end_before_running_is_allowed() -> None:
    """A session can fail straight from 'created' (launch failed)."""
    f = Feed()
    f("session.created", CREATED)
    f("session.ended", {"ended_by": "daemon", "status": "failed", "reason": "launch failed"})
    assert f.cur.status == "failed"
    assert f.session_history()[-1] == ("created", "failed")


def test_steps_are_inserted_and_updated() -> None:
    """step.started inserts a running step row; step.finished updates it with status, duration and error."""
    f = Feed().started()
    f("step.started", {"name": "train"}, src="r", node="n1")
    f("step.finished", {"name": "train", "status": "failed", "duration": 1.5, "error": "boom"}, src="r", node="n1")
    (ins,) = f.out.step_inserts
    assert (ins["node_id"], ins["name"], ins["status"], ins["start_seq"]) == ("n1", "train", "running", 4)
    (upd,) = f.out.step_updates
    assert (upd["node_id"], upd["status"], upd["duration"], upd["error"]) == ("n1", "failed", 1.5, "boom")
    assert f.cur.status == "running"  # steps do not change the session status


def test_resource_samples_keep_peaks() -> None:
    """Peaks only ever grow across resource samples."""
    f = Feed().started()
    sample = {"rss": 1, "cpu_percent": 1.0, "num_procs": 1}
    f("resource.sample", {**sample, "peak_rss": 100, "peak_cpu_percent": 50})
    f("resource.sample", {**sample, "peak_rss": 80, "peak_cpu_percent": 75.5})
    assert (f.cur.peak_rss, f.cur.peak_cpu_percent) == (100, 75.5)
    assert f.out.session_updates["s1"]["peak_rss"] == 100


# ---- reasons at the end ------------------------------------------------------------------------------

def _end(f: Feed, **payload: Any) -> dict[str, Any]:
    return f("session.ended", {"ended_by": "runner", **payload})


def test_finish_failed_outcome_reports_workflow_error() -> None:
    """A workflow failure ends 'failed' with the workflow's error in the reason."""
    f = Feed().started()
    f("session.finished", {"outcome": "failed", "error": "RuntimeError: boom"}, src="r")
    p = _end(f, exit_code=1)
    assert (p["status"], p["reason"]) == ("failed", "workflow failed: RuntimeError: boom")
    assert f.cur.status == "failed"


def test_a_huge_failure_text_is_cut_in_the_row_and_history_not_in_the_events() -> None:
    """A workflow error of 900,000 characters: the session row's ``outcome_error`` and ``reason`` and the history's
    ``reason`` keep its first 10,000 characters and say how many more there were (they go into every session.list
    reply); the events themselves (``session.finished``, ``session.ended``) keep the whole text. Pause reasons
    the runner reports are cut the same way."""
    error = "RuntimeError: " + "x" * 900_000
    f = Feed().started()
    f("session.paused", {"by": "runner", "reason": "p" * 20_000}, src="r")
    assert f.out.session_updates["s1"]["reason"] == "p" * MAX_REASON + "… (10000 more)"
    finished = f("session.finished", {"outcome": "failed", "error": error}, src="r")
    ended = _end(f, exit_code=1)
    assert finished["error"] == error and ended["reason"] == f"workflow failed: {error}"
    row = f.out.session_updates["s1"]
    more = len(error) + len("workflow failed: ") - MAX_REASON
    assert row["reason"] == f"workflow failed: {error}"[:MAX_REASON] + f"… ({more} more)"
    assert row["outcome_error"] == error[:MAX_REASON] + f"… ({len(error) - MAX_REASON} more)"
    assert f.out.history[-1]["reason"] == row["reason"] and f.out.history[-1]["to_status"] == "failed"
    assert all(len(h["reason"]) < MAX_REASON + 20 for h in f.out.history)
    assert f.cur.outcome_error == error  # what finalize reads: the whole text, cut once


def test_finish_failed_outcome_without_error_text() -> None:
    """A failure without error text still gets a reason."""
    f = Feed().started()
    f("session.finished", {"outcome": "failed"}, src="r")
    assert _end(f, exit_code=1)["reason"] == "workflow failed: error"


def test_cancelled_by_stop() -> None:
    """A stop request makes the end 'cancelled', naming who stopped it and how it ended."""
    f = Feed().started()
    f("session.stopping", {"by": "user", "reason": "stop requested", "step": "cooperative"})
    f("session.stopping", {"by": "monitor", "reason": "again", "step": "sigterm"})  # first stopper wins
    f("session.finished", {"outcome": "cancelled", "error": "stop requested"}, src="r")
    p = _end(f, exit_code=3)
    assert (p["status"], p["reason"]) == ("cancelled", "stopped by user (ended by runner)")


def test_cancelled_outcome_without_stop_request() -> None:
    """A runner-reported cancellation (e.g. SIGTERM from outside) ends 'cancelled' with its message."""
    f = Feed().started()
    f("session.finished", {"outcome": "cancelled", "error": "terminated (SIGTERM)"}, src="r")
    assert _end(f, exit_code=3)["reason"] == "terminated (SIGTERM)"


@pytest.mark.parametrize(("limit", "reason"), [
    ({"limit": "memory", "measured": 530 * MiB, "max": 512 * MiB, "unit": "bytes", "action": "kill"},
     "killed: memory 530 MiB > limit 512 MiB"),
    ({"limit": "timeout", "measured": 61.04, "max": 60, "unit": "seconds", "action": "stop"},
     "stopped: timeout 61.04 s > limit 60 s"),
    ({"limit": "cpu", "measured": 151.2, "max": 100, "unit": "percent", "action": "kill"},
     "killed: cpu 151 % > limit 100 %"),
])
def test_limit_kill_reason(limit: dict[str, Any], reason: str) -> None:
    """A limit breach ends the session 'failed' with a readable reason, beating stop requests and signals."""
    f = Feed().started()
    f("limit.exceeded", limit)
    f("limit.exceeded", {**limit, "measured": limit["measured"] * 2})  # first breach wins
    f("session.stopping", {"by": "monitor", "reason": "limit", "step": "sigkill"})
    p = _end(f, signal=int(signal.SIGKILL), ended_by="monitor")
    assert (p["status"], p["reason"]) == ("failed", reason)


def test_killed_by_signal_without_outcome() -> None:
    """A runner that dies from a signal before reporting is 'failed: runner killed by SIGKILL'."""
    f = Feed().started()
    p = _end(f, signal=int(signal.SIGKILL), ended_by="monitor")
    assert (p["status"], p["reason"]) == ("failed", "runner killed by SIGKILL")


def test_signal_after_completed_outcome_is_still_a_failure() -> None:
    """Reporting 'completed' and then dying by a signal is not a completion."""
    f = Feed().started()
    f("session.finished", {"outcome": "completed"}, src="r")
    p = _end(f, signal=int(signal.SIGSEGV))
    assert (p["status"], p["reason"]) == ("failed", "runner killed by SIGSEGV")


def test_unknown_signal_number_is_named_by_number() -> None:
    """A signal number with no name is shown as 'signal N'."""
    f = Feed().started()
    assert _end(f, signal=250)["reason"] == "runner killed by signal 250"


def test_exit_code_without_outcome() -> None:
    """An exit without an outcome report names the exit code."""
    f = Feed().started()
    p = _end(f, exit_code=2)
    assert (p["status"], p["reason"]) == ("failed", "runner exited with code 2 before reporting an outcome")


def test_vanished_runner_is_lost() -> None:
    """No outcome, no exit code, no signal: the session is 'lost'."""
    f = Feed().started()
    p = _end(f, ended_by="monitor")
    assert p["status"] == "lost" and "vanished" in p["reason"]
    assert f.cur.status == "lost"


def test_finalize_keeps_explicit_status_and_reason() -> None:
    """A payload that already has status and reason is left untouched; status alone doubles as the reason."""
    cur = SessionCursor(id="x", outcome="completed")
    p = {"ended_by": "daemon", "status": "lost", "reason": "daemon restarted"}
    finalize(cur, p)
    assert (p["status"], p["reason"]) == ("lost", "daemon restarted")
    q = {"ended_by": "daemon", "status": "cancelled"}
    finalize(cur, q)
    assert (q["status"], q["reason"]) == ("cancelled", "cancelled")


# ---- capture fidelity: planned steps, deletions, blobs, outcome precedence ---------------------------------

def test_a_planned_step_is_a_row_that_starts_in_place() -> None:
    """``step.planned`` inserts a node with status planned; ``step.started`` with ``planned`` updates that
    same row to running (no second insert) and records planned -> running."""
    f = Feed().started()
    f("step.planned", {"name": "step 1", "kind": "step"}, src="r", node="n1")
    assert [(r["node_id"], r["status"]) for r in f.out.step_inserts] == [("n1", "planned")]
    f("step.started", {"name": "step 1", "kind": "step", "planned": True, "edges": [["n0", "retry"]]}, src="r",
      node="n1")
    assert len(f.out.step_inserts) == 1
    assert [(r["node_id"], r["status"]) for r in f.out.step_starts] == [("n1", "running")]
    assert {"session_id": "s1", "src": "n0", "dst": "n1", "type": "retry"} in f.out.edges
    node_rows = [(h["from_status"], h["to_status"]) for h in f.out.history if h["node_id"] == "n1"]
    assert node_rows == [(None, "planned"), ("planned", "running")]


def test_file_deleted_is_a_files_row_and_candidates_are_kept() -> None:
    """A deletion is a ``files`` row with change ``deleted``; an ambiguous change keeps its candidates."""
    f = Feed().started()
    f("file.created", {"path": "a.txt", "sha256": "0" * 64, "size": 3, "kind": "text", "ambiguous": True,
                       "candidates": ["n1", "n2"]}, src="r")
    f("file.deleted", {"path": "a.txt", "sha256": "0" * 64, "kind": "text"}, src="r", node="n3")
    assert [(r["change"], r["size"], r["candidates"]) for r in f.out.files] == [("created", 3, '["n1","n2"]'),
                                                                              ("deleted", 0, None)]


def test_take_blobs_moves_texts_out_of_the_payload() -> None:
    """Ingest's blob step: the payload loses ``blobs``, the texts and a reference row go to the changes,
    and a payload without blobs is returned as is."""
    import hashlib

    from labd.store.blobs import take_blobs

    text = "é" * 5000
    digest = hashlib.sha256(text.encode()).hexdigest()
    out = RowChanges()
    payload = {"content": {"$blob": digest, "size": 10000}, "blobs": {digest: text}}
    stored = take_blobs("s1", 7, 1.0, payload, out)
    assert stored == {"content": {"$blob": digest, "size": 10000}} and "blobs" in payload
    assert out.blobs == [{"sha256": digest, "size": 10000, "data": text, "created_at": 1.0}]
    assert out.blob_refs == [{"session_id": "s1", "sha256": digest, "first_seq": 7}]
    plain = {"content": "x"}
    assert take_blobs("s1", 8, 1.0, plain, out) is plain


def test_a_completed_outcome_wins_over_a_later_limit() -> None:
    """A runner that reported ``completed`` keeps that outcome even if a budget stop was recorded after."""
    f = Feed().started()
    f("session.finished", {"outcome": "completed"}, src="r")
    f("limit.exceeded", {"limit": "budget", "measured": 0.0016, "max": 0.0015, "unit": "USD", "action": "stop"})
    ended = f("session.ended", {"ended_by": "exit", "exit_code": 0})
    assert (ended["status"], ended["reason"]) == ("completed", "completed")
