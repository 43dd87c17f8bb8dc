"""Session requests: start, list, get, stop, kill."""

from __future__ import annotations

import math
import secrets
from typing import Any

from labd.daemon.api.base import DEFERRED, ApiError, Request, register
from labd.daemon.monitor import Limits
from labd.ipc.events import STATUSES, TERMINAL_STATUSES
from labd.ipc.functions import FUNCTION_WORKFLOW, MAX_PAYLOAD, MAX_PAYLOAD_TEXT, MAX_RESULT, check_params
from labd.ipc.units import UnitError, parse_duration, parse_percent, parse_size
from labd.runner.workflows.registry import WorkflowError, canonical

__all__ = ["resolve_ref", "resolve_session"]


def resolve_session(req: Request) -> dict[str, Any]:
    """The session a request names by id, unique id prefix, or name."""
    ref = req.arg("session", str, check=lambda s: 0 < len(s) <= 200, hint="a session id or name")
    return resolve_ref(req.daemon.store, ref)


def resolve_ref(store: Any, ref: str) -> dict[str, Any]:
    """The session ``ref`` names: an id, a unique id prefix, or a name (the newest with that name)."""
    if not 0 < len(ref) <= 200:
        raise ApiError("bad_request", "a session reference must be 1-200 characters")
    row = store.session(ref)
    if row is not None:
        return row
    found = store.find_session(ref)
    if not found:
        raise ApiError("not_found", f"no session {ref!r}")
    by_name = [r for r in found if r["name"] == ref]
    if by_name:
        return by_name[0]  # names may repeat: the newest one
    if len(found) > 1:
        raise ApiError("ambiguous", f"{ref!r} matches {len(found)} sessions; give more of the id",
                       {"matches": [r["id"] for r in found]})
    return found[0]


def _limits(body: dict[str, Any]) -> Limits:
    raw = body.get("limits") or {}
    if not isinstance(raw, dict):
        raise ApiError("bad_request", "field 'limits' must be an object")
    unknown = set(raw) - {"memory", "cpu", "timeout", "budget", "budget_action"}
    if unknown:
        raise ApiError("bad_request", f"unknown limits {sorted(unknown)} "
                       "(accepted: memory, cpu, timeout, budget, budget_action)")
    action = raw.get("budget_action") or "stop"
    if action not in ("stop", "pause"):
        raise ApiError("bad_limits", "budget_action must be stop or pause")
    try:
        mem, cpu, tmo = raw.get("memory"), raw.get("cpu"), raw.get("timeout")
        return Limits(
            memory=parse_size(mem) if isinstance(mem, str) else _positive(mem, "memory"),
            cpu=parse_percent(str(cpu)) if cpu is not None else None,
            timeout=parse_duration(tmo) if isinstance(tmo, str) else _positive(tmo, "timeout"),
            budget=_positive(raw.get("budget"), "budget"), budget_action=action,
        )
    except UnitError as exc:
        raise ApiError("bad_limits", str(exc)) from None


def _positive(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ApiError("bad_limits", f"limit {name!r} must be a positive number or a string like 512M / 50% / 1h")
    return value


def _is_abs_path(p: Any) -> bool:
    return isinstance(p, str) and 0 < len(p) <= 4096 and p.startswith("/") and "\0" not in p


def where_from(req: Request) -> tuple[str, str | None, list[str]]:
    """The request's workflow, made canonical against its ``cwd``, and the directories the runner (and the
    inspecting child) put first on ``sys.path``: the client's ``cwd``, then its ``pythonpath``."""
    workflow = req.arg("workflow", str, check=lambda s: 0 < len(s) <= 4096, hint="a workflow name")
    cwd = req.arg("cwd", str, None, check=_is_abs_path, hint="an absolute directory path")
    pythonpath = req.arg("pythonpath", list, [], check=lambda ps: len(ps) <= 100 and all(map(_is_abs_path, ps)),
                         hint="a list of up to 100 absolute directory paths")
    try:
        workflow = canonical(workflow, cwd)
    except WorkflowError as exc:
        raise ApiError(exc.code, exc.message, exc.details) from None
    if len(workflow) > 300:  # the sessions table's column
        raise ApiError("bad_request", f"workflow name or path too long ({len(workflow)} > 300 characters)")
    path = ([cwd] if cwd else []) + [p for p in pythonpath if p != cwd]
    return workflow, cwd, path


def _roles(req: Request) -> tuple[dict[str, Any], dict[str, str]]:
    """The agent registry for a new session (read now: edits apply to the next session) and its
    ``agents`` overrides ``{role asked for: role to use}``, checked against the registry."""
    from labd.runner.roles import RoleError, load_roles

    overrides = req.arg("agents", dict, {}, check=lambda a: len(a) <= 100 and all(
        isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 100 and 0 < len(v) <= 100 for k, v in a.items()),
        hint="an object {role: other role}")
    try:
        roles = load_roles(req.daemon.cfg.agents, req.daemon.layout.home / "agents")
    except RoleError as exc:
        raise ApiError("bad_agents", str(exc)) from None
    unknown = sorted(v for v in overrides.values() if v not in roles)
    if unknown:
        raise ApiError("bad_agents", f"unknown agent roles {unknown}; known: {', '.join(sorted(roles))}")
    return {n: r.to_dict() for n, r in roles.items()}, overrides


def live_view(req: Request, row: dict[str, Any]) -> dict[str, Any]:
    """A session row plus live figures from the monitor (for sessions still running)."""
    out = dict(row)
    live = req.daemon.monitor.snapshot().get(row["id"])
    out["live"] = live
    seen = req.daemon.last_seen.get(row["id"])
    out["last_seen"] = seen
    return out


@register
class Start(Request):
    type = "session.start"

    def execute(self) -> Any:
        workflow, _cwd, path = where_from(self)
        params = self.arg("params", dict, {})
        name = self.arg("name", str, None, check=lambda s: 0 < len(s) <= 200, hint="1-200 characters")
        limits = _limits(self.body)
        d = self.daemon
        roles, overrides = _roles(self)
        # A function sent with Client.submit: its pickle travels in `payload`, is recorded in session.created
        # (not in the session row, which every session.list returns) and reaches only the runner. Never unpickled here.
        payload = self.arg("payload", str, None, check=lambda s: 0 < len(s) <= MAX_PAYLOAD_TEXT,
                           hint=f"base64 text of a pickled call of at most {MAX_PAYLOAD} bytes")
        if (payload is not None) != (workflow == FUNCTION_WORKFLOW):
            raise ApiError("bad_request", f"field 'payload' goes with workflow {FUNCTION_WORKFLOW!r}, and that "
                           "workflow needs it (use Client.submit)")
        if payload is not None:
            try:
                check: dict[str, Any] = {"ok": True, "params": check_params(params, payload)}
            except ValueError as exc:
                raise ApiError("bad_params", str(exc)) from None
        else:
            check = d.check_workflow(workflow, params, path)
        if isinstance(limits.budget, float | int) and not math.isfinite(limits.budget):
            raise ApiError("bad_limits", "budget must be a finite amount of USD")
        if not check.get("ok"):
            raise ApiError(check.get("code", "bad_params"), check.get("message", "invalid workflow"),
                           check.get("details"))
        params = check.get("params", params)
        sid = secrets.token_hex(6)
        label = (check.get("function") or workflow.rsplit(":", 1)[-1]) if payload is None \
            else str(params.get("function") or "function")
        name = name or f"{label.rsplit('.', 1)[-1].strip('<>')[:180]}-{sid[:6]}"
        workdir = d.layout.sessions_dir / sid / "work"
        created = {"workflow": workflow, "name": name, "params": params, "limits": limits.to_dict(),
                   "workdir": str(workdir)}
        if payload is not None:
            created["payload"] = payload
        d.post_event(sid, "session.created", created, reply_to=self.reply_to)
        # the value sent back must fit one event (base64 grows it by 4/3; headroom for the envelope)
        max_result = max(0, min(MAX_RESULT, (d.cfg.max_message - 2048) * 3 // 4))
        run_params = params if payload is None else {**params, "payload": payload, "max_result": max_result}
        spec = {"session_id": sid, "name": name, "workflow": workflow, "sys_path": path, "params": run_params,
                "workdir": str(workdir),
                "endpoint": d.info.runners, "key": d.info.key, "secret_names": d.cfg.secret_env,
                "models": d.cfg.models, "prices": d.cfg.prices, "max_message": d.cfg.max_message,
                "mcp_servers": d.cfg.mcp_servers, "roles": roles, "agent_overrides": overrides,
                "secrets": d.secrets}
        try:
            d.supervisor.launch(sid, spec, limits)
        except Exception as exc:  # noqa: BLE001 - reported as the session's end and to the client
            d.post_event(sid, "session.ended", {"status": "failed", "reason": f"launch failed: {exc}",
                                                "ended_by": "launch"})
        return DEFERRED


@register
class InspectWorkflow(Request):
    """What ``session.start`` would run: the workflow's doc and parameters, resolved where the client stands."""

    type = "workflow.inspect"

    def execute(self) -> Any:
        workflow, _cwd, path = where_from(self)
        params = self.arg("params", dict, {})
        check = self.daemon.check_workflow(workflow, params, path)
        if not check.get("ok"):
            raise ApiError(check.get("code", "bad_params"), check.get("message", "invalid workflow"),
                           check.get("details"))
        described = check.get("describe") or {}
        return {"workflow": workflow, "function": check.get("function"), "doc": described.get("doc", ""),
                "params": described.get("params", []), "bound": check.get("params", {})}


@register
class ListSessions(Request):
    type = "session.list"

    def execute(self) -> Any:
        status = self.arg("status", list, None, check=lambda s: all(x in STATUSES for x in s),
                          hint=f"a list of statuses ({', '.join(STATUSES)})")
        limit = self.arg("limit", int, 200, check=lambda n: 0 < n <= 10_000, hint="1-10000")
        rows = self.daemon.store.sessions(status=status, limit=limit)
        return {"sessions": [live_view(self, r) for r in rows]}


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
        if row["status"] in TERMINAL_STATUSES or not self.daemon.supervisor.stop(row["id"], "client", grace):
            raise ApiError("not_running", f"session {row['id']} is not running (status {row['status']})")
        return {"session": row["id"], "stopping": True, "grace": grace}


@register
class Kill(Request):
    type = "session.kill"

    def execute(self) -> Any:
        row = resolve_session(self)
        if row["status"] in TERMINAL_STATUSES or not self.daemon.supervisor.kill(row["id"], "client"):
            raise ApiError("not_running", f"session {row['id']} is not running (status {row['status']})")
        return {"session": row["id"], "killing": True}
