"""Session requests: start, list, get, stop, kill."""

from __future__ import annotations

import math
import secrets
import time
from typing import Any

from labd.daemon.api.base import DEFERRED, ApiError, Request, register
from labd.daemon.config import ConfigError, parse_duration, parse_percent, parse_size
from labd.daemon.monitor import Limits
from labd.daemon.queue import Queued
from labd.ipc.events import STATUSES, TERMINAL_STATUSES

__all__ = ["resolve_session", "session_spec", "requeue"]


def resolve_session(req: Request) -> dict[str, Any]:
    """The session a request names by id, unique id prefix, or name."""
    ref = req.arg("session", str, check=lambda s: 0 < len(s) <= 200, hint="a session id or name")
    row = req.daemon.store.session(ref)
    if row is not None:
        return row
    found = req.daemon.store.find_session(ref)
    if not found:
        raise ApiError("not_found", f"no session {ref!r}")
    by_name = [r for r in found if r["name"] == ref]
    if by_name:
        return by_name[0]  # names may repeat: the newest one
    if len(found) > 1:
        raise ApiError("ambiguous", f"{ref!r} matches {len(found)} sessions; give more of the id",
                       {"matches": [r["id"] for r in found]})
    return found[0]


#: below this a runner cannot even start: an idle runner's PSS is ~7-12 MiB (docs/benchmarks.md), and the
#: channel, capture and first workflow import need headroom; a smaller --memory would kill every session
MIN_MEMORY = 32 * 2**20
MAX_PROCS = 1_000_000


def _limits(body: dict[str, Any], default_procs: int | None = None) -> Limits:
    raw = body.get("limits") or {}
    if not isinstance(raw, dict):
        raise ApiError("bad_request", "field 'limits' must be an object")
    unknown = set(raw) - {"memory", "cpu", "timeout", "budget", "budget_action", "procs"}
    if unknown:
        raise ApiError("bad_request", f"unknown limits {sorted(unknown)} "
                       "(accepted: memory, cpu, timeout, budget, budget_action, procs)")
    action = raw.get("budget_action") or "stop"
    if action not in ("stop", "pause"):
        raise ApiError("bad_limits", "budget_action must be stop or pause")
    try:
        mem, cpu, tmo = raw.get("memory"), raw.get("cpu"), raw.get("timeout")
        if isinstance(mem, str) and mem.strip().isdigit():
            raise ApiError("bad_limits", f"memory limit {mem!r} has no unit: write e.g. {mem.strip()}M or "
                           f"{mem.strip()}G (a JSON number means bytes)")
        memory = parse_size(mem) if isinstance(mem, str) else _positive(mem, "memory")
        if memory is not None and memory < MIN_MEMORY:
            raise ApiError("bad_limits", f"memory limit {int(memory)} bytes is below what a runner needs to start "
                           f"({MIN_MEMORY // 2**20} MiB); sizes take a unit, e.g. 512M",
                           {"min_bytes": MIN_MEMORY})
        cpu_pct = parse_percent(str(cpu)) if cpu is not None else None
        if cpu_pct is not None and cpu_pct < 1:
            raise ApiError("bad_limits", f"CPU limit {cpu!r} is {cpu_pct:g} % of one core, too little to run; "
                           "the unit is percent (50% = half a core)")
        procs = raw.get("procs", body.get("procs", default_procs))
        if procs is not None and (isinstance(procs, bool) or not isinstance(procs, int)
                                  or not 1 <= procs <= MAX_PROCS):
            raise ApiError("bad_limits", f"procs must be a whole number of processes (1-{MAX_PROCS}), not {procs!r}")
        return Limits(
            memory=memory, cpu=cpu_pct,
            timeout=parse_duration(tmo) if isinstance(tmo, str) else _positive(tmo, "timeout"),
            budget=_positive(raw.get("budget"), "budget"), budget_action=action, procs=procs,
        )
    except ConfigError as exc:
        raise ApiError("bad_limits", str(exc)) from None


def _positive(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ApiError("bad_limits", f"limit {name!r} must be a positive number or a string like 512M / 50% / 1h")
    return value


def live_view(req: Request, row: dict[str, Any], live: dict[str, dict[str, Any]] | None = None,
              positions: dict[str, int] | None = None) -> dict[str, Any]:
    """A session row plus live figures from the monitor (for sessions still running) and, for a session not
    started yet, its place in the run queue. ``live``/``positions``: precomputed for a whole list."""
    out = dict(row)
    sid = row["id"]
    out["live"] = live.get(sid) if live is not None else req.daemon.monitor.snapshot_of(sid)
    out["last_seen"] = req.daemon.last_seen.get(sid)
    if row["status"] in ("created", "queued"):
        queue = req.daemon.supervisor.queue
        out["queue_position"] = positions.get(sid) if positions is not None else queue.position(sid)
    return out


@register
class Start(Request):
    type = "session.start"

    def execute(self) -> Any:
        workflow = self.arg("workflow", str, check=lambda s: 0 < len(s) <= 300, hint="a workflow name")
        params = self.arg("params", dict, {})
        name = self.arg("name", str, None, check=lambda s: 0 < len(s) <= 200, hint="1-200 characters")
        limits = _limits(self.body, self.daemon.cfg.procs or None)
        priority = self.arg("priority", int, 0, check=lambda p: -1000 <= p <= 1000, hint="an integer -1000..1000")
        d = self.daemon
        check = d.check_workflow(workflow, params)
        if isinstance(limits.budget, float | int) and not math.isfinite(limits.budget):
            raise ApiError("bad_limits", "budget must be a finite amount of USD")
        if not check.get("ok"):
            raise ApiError(check.get("code", "bad_params"), check.get("message", "invalid workflow"),
                           check.get("details"))
        params = check.get("params", params)
        queue = d.supervisor.queue
        if queue.never_fits(limits):
            raise ApiError("bad_limits", f"memory limit {limits.memory} bytes is more than the daemon's whole "
                           f"memory_total ({queue.memory_total} bytes): the session could never start")
        sid = secrets.token_hex(6)
        name = name or f"{workflow.rsplit(':', 1)[-1]}-{sid[:6]}"
        workdir = d.layout.sessions_dir / sid / "work"
        d.post_event(sid, "session.created", {"workflow": workflow, "name": name, "params": params,
                                              "limits": limits.to_dict(), "workdir": str(workdir)},
                     reply_to=self.reply_to)
        d.supervisor.submit(queue.entry(sid, workflow, params, limits, str(workdir), priority, time.time()))
        return DEFERRED


def session_spec(d: Any, q: Queued) -> dict[str, Any]:
    """The runner's start spec for a session (built when it launches, so a queued one gets current settings)."""
    return {"session_id": q.sid, "workflow": q.workflow, "params": q.params, "workdir": q.workdir,
            "endpoint": d.info.runners, "key": d.info.key, "secret_names": d.cfg.secret_env,
            "models": d.cfg.models, "prices": d.cfg.prices, "max_message": d.cfg.max_message,
            "secrets": d.secrets}


def requeue(d: Any) -> int:
    """Put the sessions stored as ``queued`` back in the run queue, in their order; at daemon start."""
    rows = d.store.sessions(status=["queued"], limit=100_000)
    for row in rows:
        queued = d.store.events(row["id"], kinds=["session.queued"], limit=1)
        priority = int(queued[0]["payload"].get("priority") or 0) if queued else 0
        d.supervisor.requeue(d.supervisor.queue.entry(row["id"], row["workflow"], row["params"],
                                                      Limits.from_dict(row["limits"]), row["workdir"], priority,
                                                      row["created_at"]))
    return len(rows)


@register
class ListSessions(Request):
    type = "session.list"

    def execute(self) -> Any:
        status = self.arg("status", list, None, check=lambda s: all(x in STATUSES for x in s),
                          hint=f"a list of statuses ({', '.join(STATUSES)})")
        limit = self.arg("limit", int, 200, check=lambda n: 0 < n <= 10_000, hint="1-10000")
        rows = self.daemon.store.sessions(status=status, limit=limit)
        live, positions = self.daemon.monitor.snapshot(), self.daemon.supervisor.queue.positions()
        return {"sessions": [live_view(self, r, live, positions) for r in rows]}


@register
class GetSession(Request):
    type = "session.get"

    def execute(self) -> Any:
        row = resolve_session(self)
        out = live_view(self, row)
        out["steps"] = self.daemon.store.steps(row["id"])
        out["history"] = self.daemon.store.history(row["id"])
        return {"session": out}


@register
class Stop(Request):
    type = "session.stop"

    def execute(self) -> Any:
        row = resolve_session(self)
        grace = self.arg("grace", (int, float), self.daemon.cfg.stop_grace, check=lambda g: 0 <= g <= 3600,
                         hint="seconds between 0 and 3600")
        if self.daemon.supervisor.dequeue(row["id"], "client"):
            return {"session": row["id"], "stopping": True, "grace": grace, "was_queued": True}
        if row["status"] in TERMINAL_STATUSES or not self.daemon.supervisor.stop(row["id"], "client", grace):
            raise ApiError("not_running", f"session {row['id']} is not running (status {row['status']})")
        return {"session": row["id"], "stopping": True, "grace": grace}


@register
class Kill(Request):
    type = "session.kill"

    def execute(self) -> Any:
        row = resolve_session(self)
        if self.daemon.supervisor.dequeue(row["id"], "client"):
            return {"session": row["id"], "killing": True, "was_queued": True}
        if row["status"] in TERMINAL_STATUSES or not self.daemon.supervisor.kill(row["id"], "client"):
            raise ApiError("not_running", f"session {row['id']} is not running (status {row['status']})")
        return {"session": row["id"], "killing": True}
