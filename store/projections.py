"""Projections: how each event changes the session, step and state-history rows.

Ingest calls :func:`apply` for every accepted event, in ``seq`` order, and writes the resulting row
changes in the same transaction as the events. Replaying a session's events through :func:`apply`
rebuilds its projections exactly, so the projections are never a second source of truth.
"""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass, field
from typing import Any

import orjson

from labd.ipc.events import TERMINAL_STATUSES
from labd.ipc.units import format_limit, format_over
from labd.runner.context import MAX_STEP_ERROR, clip

__all__ = ["SessionCursor", "RowChanges", "apply", "ALLOWED_TRANSITIONS", "MAX_REASON"]

#: a session's ``reason`` (row and state history) and ``outcome_error`` beyond this many characters are cut
#: (``… (N more)``), as step errors are: one failure with megabytes of text must not make every session.list
#: reply too large. The events keep the whole text.
MAX_REASON = MAX_STEP_ERROR

_ENDS = frozenset({"completed", "failed", "cancelled", "lost"})
#: how a stopped session's runner ended (``ended_by``), as its reason says it (it read "ended by cooperative")
_STOPPED_HOW = {"cooperative": "at a step boundary", "sigterm": "ended by SIGTERM", "sigkill": "ended by SIGKILL",
                "exit": "its runner exited"}
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    # created -> running: the runner's first event can be stored before the daemon's session.launched
    "created": frozenset({"queued", "starting", "running"}) | _ENDS,
    "queued": frozenset({"starting", "running"}) | _ENDS,  # run queue: waits for capacity, then launches
    "starting": frozenset({"running"}) | _ENDS,
    "running": frozenset({"paused", "waiting_approval"}) | _ENDS,
    "paused": frozenset({"running", "waiting_approval"}) | _ENDS,
    "waiting_approval": frozenset({"running", "paused"}) | _ENDS,
}


@dataclass
class SessionCursor:
    """What ingest must remember about one session between batches."""

    id: str
    last_seq: int = 0
    runner_seq: int = 0
    status: str = "created"
    outcome: str | None = None
    outcome_error: str | None = None
    kill_reason: str | None = None  # a limit breach that ended it
    stop_by: str | None = None  # who asked it to stop
    peak_rss: int = 0
    peak_cpu_percent: float = 0.0
    cost: float = 0.0
    budget: float | None = None
    budget_hit: bool = False
    #: the session's limits as stored (``sessions.limits``): a resume with a new budget rewrites them
    limits: dict[str, Any] = field(default_factory=dict)
    #: bytes of output kept (``limits.output``) as stored; ingest's backstop (daemon/outputcap.py) reads it
    output_cap: int | None = None
    #: what the current run has recorded against its bounds (``sessions.record_bytes``, ``sessions.output_chars``):
    #: daemon/recordcap.py and daemon/outputcap.py count, the writer stores them with each batch
    record_bytes: int = 0
    output_chars: int = 0
    #: approval id -> allowed decisions, for approvals not yet resolved (what a resolution is checked against:
    #: at most 100 options of at most 40 characters each, labd.ipc.events APPROVAL_*)
    pending_approvals: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rejected: int = 0  # events that failed validation

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass
class RowChanges:
    """Row writes produced by one batch, flushed by the writer in one transaction."""

    session_inserts: list[dict[str, Any]] = field(default_factory=list)
    session_updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    step_inserts: list[dict[str, Any]] = field(default_factory=list)
    step_updates: list[dict[str, Any]] = field(default_factory=list)
    step_starts: list[dict[str, Any]] = field(default_factory=list)  # a planned node starts running
    steps_closed: list[dict[str, Any]] = field(default_factory=list)  # a session ended: its open steps with it
    history: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)
    costs: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    approval_inserts: list[dict[str, Any]] = field(default_factory=list)
    approval_updates: list[dict[str, Any]] = field(default_factory=list)
    idempotency: list[dict[str, Any]] = field(default_factory=list)  # session.start keys, with the session
    blobs: list[dict[str, Any]] = field(default_factory=list)
    blob_refs: list[dict[str, Any]] = field(default_factory=list)

    def update(self, session_id: str, **values: Any) -> None:
        self.session_updates.setdefault(session_id, {}).update(values)


def _transition(cur: SessionCursor, to: str, seq: int, ts: float, reason: str, actor: str,
                out: RowChanges) -> None:
    if to == cur.status or to not in ALLOWED_TRANSITIONS.get(cur.status, frozenset()):
        return
    reason = clip(reason, MAX_REASON)
    out.history.append({"session_id": cur.id, "seq": seq, "ts": ts, "from_status": cur.status,
                        "to_status": to, "reason": reason, "actor": actor, "node_id": None})
    cur.status = to
    out.update(cur.id, status=to, reason=reason)


def _signal_name(num: int) -> str:
    try:
        return _signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def finalize(cur: SessionCursor, payload: dict[str, Any]) -> None:
    """Fill the final ``status`` and ``reason`` of a ``session.ended`` payload from what is known."""
    if payload.get("status") and payload.get("reason"):
        return
    code, sig = payload.get("exit_code"), payload.get("signal")
    if payload.get("status"):
        status, reason = payload["status"], payload["status"]
    elif cur.outcome == "completed" and not sig:
        # a session that finished keeps its own outcome, whatever limit or stop arrived after
        status, reason = "completed", "completed"
    elif cur.kill_reason:
        status, reason = "failed", cur.kill_reason
    elif cur.stop_by:
        how = payload["ended_by"]
        status, reason = "cancelled", f"stopped by {cur.stop_by} ({_STOPPED_HOW.get(how, f'ended by {how}')})"
    elif cur.outcome == "failed":
        status, reason = "failed", f"workflow failed: {cur.outcome_error or 'error'}"
    elif cur.outcome == "cancelled":
        status, reason = "cancelled", cur.outcome_error or "cancelled"
    elif sig:
        status, reason = "failed", f"runner killed by {_signal_name(sig)}"
    elif code is not None:
        status, reason = "failed", f"runner exited with code {code} before reporting an outcome"
    else:
        # lost_reason: what the launcher knows (a Ray actor or node that died, and why)
        status, reason = "lost", payload.get("lost_reason") or "runner process vanished without reporting an outcome"
    crash = payload.get("runner_stderr")
    if (sig or code) and reason.startswith("runner ") and isinstance(crash, str) and crash.strip():
        # the runner's own crash report (its sessions/<id>/runner.stderr, secrets withheld; daemon/supervisor.py)
        reason = f"{reason}; its stderr ended with:\n{crash.strip()}"
    payload["status"], payload["reason"] = status, reason


def apply(cur: SessionCursor, seq: int, ts: float, kind: str, src: str, node_id: str | None,
          payload: dict[str, Any], out: RowChanges) -> None:
    """Update ``cur`` and ``out`` for one event (may complete a ``session.ended`` payload in place)."""
    cur.last_seq = seq
    actor = "runner" if src == "r" else "daemon"
    if kind == "session.created":
        cur.status = "created"
        out.session_inserts.append({
            "id": cur.id, "name": payload["name"], "workflow": payload["workflow"],
            "params": orjson.dumps(payload["params"]).decode(),
            "limits": orjson.dumps(payload["limits"]).decode(), "workdir": payload["workdir"],
            "status": "created", "created_at": ts, "last_seq": seq, "runner_seq": 0,
            "peak_rss": 0, "peak_cpu_percent": 0.0, "rejected_events": 0,
            "tags": orjson.dumps(payload.get("tags") or {}).decode(),
            "parent_id": payload.get("parent_id"), "origin": payload.get("origin"),
            "branch_node": payload.get("branch_node"),
        })
        out.history.append({"session_id": cur.id, "seq": seq, "ts": ts, "from_status": None,
                            "to_status": "created", "reason": "created", "actor": "client", "node_id": None})
        cur.limits = dict(payload["limits"])
        budget = payload["limits"].get("budget")
        cur.budget = float(budget) if isinstance(budget, int | float) else None
        if payload.get("idempotency_key"):  # committed with the session: a retry finds it, even after a restart
            out.idempotency.append({"key": payload["idempotency_key"], "session_id": cur.id,
                                    "digest": payload.get("request_digest") or "", "created_at": ts})
    elif kind == "session.queued":
        # not "queued at position N": `labd show` put that beside the position now ("queued #4 (queued at position
        # 1)"); the position when it was queued is in the event
        why = payload.get("why") or "waiting for room in the run queue (max_sessions, memory_total)"
        _transition(cur, "queued", seq, ts, str(why), actor, out)
    elif kind == "session.launched":
        out.update(cur.id, pid=payload["pid"], pid_create_time=payload["create_time"])
        _transition(cur, "starting", seq, ts, f"launched pid {payload['pid']}", actor, out)
    elif kind == "session.started":
        out.update(cur.id, started_at=ts)
        _transition(cur, "running", seq, ts, "runner started", actor, out)
    elif kind == "session.finished":
        cur.outcome = payload["outcome"]
        cur.outcome_error = payload.get("error")  # whole: the final reason is made from it (finalize)
        out.update(cur.id, outcome=cur.outcome,
                   outcome_error=None if cur.outcome_error is None else clip(cur.outcome_error, MAX_REASON))
    elif kind == "session.stopping":
        cur.stop_by = cur.stop_by or payload["by"]
        out.update(cur.id, stop_by=cur.stop_by)
    elif kind == "limit.exceeded":
        if payload["action"] != "pause":
            cur.kill_reason = cur.kill_reason or _limit_reason(payload)
            out.update(cur.id, kill_reason=cur.kill_reason)
    elif kind == "budget.exceeded":
        # The runner refused an LLM call over the budget (runner/agents/budget.py) and ends: the same reason as when
        # the daemon's stop (from the cost events) gets there first, whichever of the two does.
        if payload["action"] != "pause":
            cur.kill_reason = cur.kill_reason or _limit_reason(
                {"limit": "budget", "measured": payload["spent"], "max": payload["budget"], "unit": "USD",
                 "action": "stop"})
            out.update(cur.id, kill_reason=cur.kill_reason)
    elif kind == "session.ended":
        finalize(cur, payload)
        for aid in cur.pending_approvals:  # nobody can answer them any more
            out.approval_updates.append({"id": aid, "status": "expired", "resolved_at": ts,
                                         "resolved_via": "session ended"})
        cur.pending_approvals = {}
        # steps still open (killed mid-step, or lost) never finish now: they are not shown running for ever
        out.steps_closed.append({"session_id": cur.id, "ended_at": ts,
                                 "error": "the session ended before the step did"})
        out.update(cur.id, ended_at=ts, ended_by=payload["ended_by"], exit_code=payload.get("exit_code"),
                   signal=payload.get("signal"))
        _transition(cur, payload["status"], seq, ts, payload["reason"], actor, out)
    elif kind == "session.continued":
        _continue(cur, seq, ts, payload, out)
    elif kind == "step.planned":
        parent = payload.get("parent_node")
        out.step_inserts.append({
            "session_id": cur.id, "node_id": node_id, "name": payload["name"], "status": "planned",
            "start_seq": seq, "kind": payload.get("kind") or "step", "parent_node": parent, "agent": None,
            "attempt": None, "redo_of": None})
        if parent:
            out.edges.append({"session_id": cur.id, "src": parent, "dst": node_id, "type": "contains"})
        out.history.append({"session_id": cur.id, "seq": seq, "ts": ts, "from_status": None,
                            "to_status": "planned", "reason": "planned", "actor": actor, "node_id": node_id})
    elif kind == "step.started" and payload.get("planned") is True:
        out.step_starts.append({"session_id": cur.id, "node_id": node_id, "name": payload["name"],
                                "status": "running", "started_at": ts, "start_seq": seq,
                                "attempt": payload.get("attempt"), "redo_of": payload.get("redo_of")})
        for edge in payload.get("edges") or []:
            if isinstance(edge, list) and len(edge) == 2 and all(isinstance(x, str) for x in edge):
                out.edges.append({"session_id": cur.id, "src": edge[0], "dst": node_id, "type": edge[1]})
        out.history.append({"session_id": cur.id, "seq": seq, "ts": ts, "from_status": "planned",
                            "to_status": "running", "reason": "started", "actor": actor, "node_id": node_id})
    elif kind in ("step.started", "agent.turn.started"):
        agent_turn = kind == "agent.turn.started"
        parent = payload.get("parent_node")
        out.step_inserts.append({
            "session_id": cur.id, "node_id": node_id,
            "name": payload["agent"] if agent_turn else payload["name"],
            "status": "running", "started_at": ts, "start_seq": seq,
            "kind": "agent" if agent_turn else payload.get("kind") or "step", "parent_node": parent,
            "agent": payload["agent"] if agent_turn else None, "attempt": payload.get("attempt"),
            "redo_of": payload.get("redo_of"),
        })
        if parent:
            out.edges.append({"session_id": cur.id, "src": parent, "dst": node_id, "type": "contains"})
        for edge in payload.get("edges") or []:
            if isinstance(edge, list) and len(edge) == 2 and all(isinstance(x, str) for x in edge):
                out.edges.append({"session_id": cur.id, "src": edge[0], "dst": node_id, "type": edge[1]})
        out.history.append({"session_id": cur.id, "seq": seq, "ts": ts, "from_status": None,
                            "to_status": "running", "reason": "started", "actor": actor, "node_id": node_id})
    elif kind in ("step.finished", "agent.turn.finished"):
        out.step_updates.append({"session_id": cur.id, "node_id": node_id, "status": payload["status"],
                                 "ended_at": ts, "duration": payload["duration"],
                                 "error": payload.get("error")})
        out.history.append({"session_id": cur.id, "seq": seq, "ts": ts, "from_status": "running",
                            "to_status": payload["status"], "reason": payload.get("error") or payload["status"],
                            "actor": actor, "node_id": node_id})
    elif kind == "cost.recorded":
        cur.cost += float(payload["cost"])
        out.costs.append({"session_id": cur.id, "seq": seq, "ts": ts, "node_id": node_id,
                          "agent": payload["agent"], "model": payload["model"],
                          "prompt_tokens": payload["prompt_tokens"],
                          "completion_tokens": payload["completion_tokens"], "cost": float(payload["cost"]),
                          "offline": bool(payload["offline"])})
        out.update(cur.id, cost=cur.cost)
    elif kind in ("file.created", "file.changed", "file.deleted"):
        out.files.append({"session_id": cur.id, "seq": seq, "path": payload["path"],
                          "change": kind.split(".")[1], "sha256": payload["sha256"], "size": payload.get("size", 0),
                          "kind": payload["kind"], "node_id": node_id, "agent": payload.get("agent"),
                          "tool": payload.get("tool"), "ts": ts,
                          "candidates": orjson.dumps(payload["candidates"]).decode()
                          if isinstance(payload.get("candidates"), list) else None,
                          "restored": payload.get("restored") is True,
                          "path_b64": payload.get("path_b64") if isinstance(payload.get("path_b64"), str) else None})
    elif kind == "approval.requested":
        aid = payload["approval_id"]
        cur.pending_approvals[aid] = tuple(str(o) for o in payload["options"])
        timeout = payload.get("timeout")
        out.approval_inserts.append({
            "id": aid, "session_id": cur.id, "node_id": node_id, "kind": payload["kind"],
            "prompt": payload["prompt"], "options": orjson.dumps(payload["options"]).decode(),
            "context": orjson.dumps(payload.get("context"), default=repr).decode(), "status": "pending",
            "policy": payload.get("policy"), "requested_at": ts,
            "expires_at": ts + float(timeout) if timeout else None,
        })
        _transition(cur, "waiting_approval", seq, ts, f"approval requested: {payload['kind']}", actor, out)
    elif kind == "approval.resolved":
        cur.pending_approvals.pop(payload["approval_id"], None)
        out.approval_updates.append({
            "id": payload["approval_id"], "status": "resolved", "decision": payload["decision"],
            "feedback": payload.get("feedback"), "hypothesis": payload.get("hypothesis"),
            "resolved_by": payload["by"], "resolved_via": payload["via"], "resolved_at": ts,
        })
        if not cur.pending_approvals and cur.status == "waiting_approval":
            _transition(cur, "running", seq, ts, f"approval {payload['decision']} by {payload['by']}",
                        payload["by"], out)
    elif kind == "event.rejected":
        cur.rejected += 1
        out.update(cur.id, rejected_events=cur.rejected)
    elif kind == "session.paused":
        _transition(cur, "paused", seq, ts, payload["reason"], payload["by"], out)
    elif kind == "session.resumed":
        _transition(cur, "running", seq, ts, "resumed", payload["by"], out)
        if "budget" in payload or payload.get("budget_lifted"):  # the runner's budget from now on
            budget = payload.get("budget")
            cur.limits = {**cur.limits, "budget": budget}
            cur.budget = float(budget) if isinstance(budget, int | float) else None
            cur.budget_hit = cur.budget is not None and cur.cost > cur.budget
            out.update(cur.id, limits=orjson.dumps(cur.limits).decode())
    elif kind == "resource.sample":
        cur.peak_rss = max(cur.peak_rss, payload["peak_rss"])
        cur.peak_cpu_percent = max(cur.peak_cpu_percent, float(payload["peak_cpu_percent"]))
        out.update(cur.id, peak_rss=cur.peak_rss, peak_cpu_percent=cur.peak_cpu_percent)
    elif kind == "session.adopted":
        out.update(cur.id, pid=payload["pid"])


def _continue(cur: SessionCursor, seq: int, ts: float, payload: dict[str, Any], out: RowChanges) -> None:
    """An ended session continued by a new runner (``labd resume``): back to ``queued`` (the run queue
    launches it; a daemon that restarts meanwhile re-queues it), its previous end forgotten."""
    if cur.status not in ("failed", "lost", "cancelled"):
        return
    reason = clip(payload["reason"], MAX_REASON)
    out.history.append({"session_id": cur.id, "seq": seq, "ts": ts, "from_status": cur.status,
                        "to_status": "queued", "reason": reason, "actor": payload["by"], "node_id": None})
    cur.status = "queued"
    cur.outcome = cur.outcome_error = cur.kill_reason = cur.stop_by = None
    cur.record_bytes = cur.output_chars = 0  # a new run: the bounds count from nothing again
    values: dict[str, Any] = dict(status="queued", reason=reason, outcome=None, outcome_error=None,
                                  kill_reason=None, stop_by=None, ended_at=None, ended_by=None, exit_code=None,
                                  signal=None, pid=None, pid_create_time=None)
    limits = payload.get("limits")
    if isinstance(limits, dict):
        cur.limits = dict(limits)
        values["limits"] = orjson.dumps(limits).decode()
        budget = limits.get("budget")
        cur.budget = float(budget) if isinstance(budget, int | float) else None
        cur.budget_hit = cur.budget is not None and cur.cost > cur.budget
    out.update(cur.id, **values)
    for node in payload.get("interrupted") or []:  # steps the ended runner left open: they never finish
        if isinstance(node, str):
            out.step_updates.append({"session_id": cur.id, "node_id": node, "status": "interrupted", "ended_at": ts,
                                     "duration": None, "error": "its runner ended before the step did"})


def _limit_reason(p: dict[str, Any]) -> str:
    verb = {"kill": "killed", "pause": "paused"}.get(p["action"], "stopped")
    if p.get("enforced_by") == "cgroup":  # the kernel held the limit: usage never went past it (daemon/cgroups.py)
        return f"{verb}: {p['limit']} reached its limit {format_limit(p['max'], p['unit'])} (held by the kernel)"
    measured, top = format_over(p["measured"], p["max"], p["unit"])
    return f"{verb}: {p['limit']} {measured} > limit {top}"
