"""Session requests: start, list, get, stop, kill."""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from typing import Any

import orjson

from labd.daemon.api.base import DEFERRED, ApiError, Request, register
from labd.daemon.config import ConfigError, parse_duration, parse_percent, parse_size
from labd.daemon.monitor import Limits
from labd.ipc.events import STATUSES, TERMINAL_STATUSES
from labd.store.schema import IDEMPOTENCY_RETENTION

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
    except ConfigError as exc:
        raise ApiError("bad_limits", str(exc)) from None


def _positive(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ApiError("bad_limits", f"limit {name!r} must be a positive number or a string like 512M / 50% / 1h")
    return value


def live_view(req: Request, row: dict[str, Any]) -> dict[str, Any]:
    """A session row plus live figures from the monitor (for sessions still running)."""
    out = dict(row)
    live = req.daemon.monitor.snapshot().get(row["id"])
    out["live"] = live
    seen = req.daemon.last_seen.get(row["id"])
    out["last_seen"] = seen
    return out


MAX_PENDING_KEYS = 10_000  # in-flight idempotency keys remembered in memory (each a few dozen bytes)


def _request_digest(body: dict[str, Any]) -> str:
    """What a start asks for, so a key re-used for a different request is refused rather than replayed."""
    what = {"workflow": body.get("workflow"), "params": body.get("params") or {}, "name": body.get("name") or None,
            "limits": body.get("limits") or {}}  # absent and empty mean the same request
    return hashlib.sha256(orjson.dumps(what, option=orjson.OPT_SORT_KEYS, default=repr)).hexdigest()


@register
class Start(Request):
    """Start a session. With ``idempotency_key`` a retry of the same request returns the session the first
    one started (found in memory while its creation is not yet committed, then in the store, where the key
    is committed with the session and kept :data:`IDEMPOTENCY_RETENTION` seconds); never a second session."""

    type = "session.start"

    def _replayed(self, key: str, digest: str) -> dict[str, Any] | None:
        d = self.daemon
        pending = d.idempotent_starts
        hit = pending.get(key)
        if hit is not None:
            sid, first, name = hit[0], hit[1], hit[2]
        else:
            row = d.store.idempotent_start(key, time.time())
            if row is None:
                return None
            sid, first, name = row["session_id"], row["digest"], None
        if first and first != digest:
            raise ApiError("idempotency_conflict", "this idempotency_key was used for a different session.start "
                           "(another workflow, params, name or limits); use a new key per request",
                           {"session": sid})
        stored = d.store.session(sid)
        run = d.supervisor.running.get(sid)
        return {"session": sid, "name": stored["name"] if stored else name, "pid": run.pid if run else None,
                "replayed": True}

    def _remember(self, key: str, sid: str, digest: str, name: str) -> None:
        pending = self.daemon.idempotent_starts
        now = time.time()
        # normally emptied as ingest commits; bounded in case a store outage holds starts for a long time
        for k in [k for k, v in pending.items() if now - v[3] > IDEMPOTENCY_RETENTION]:
            del pending[k]
        while len(pending) >= MAX_PENDING_KEYS:
            del pending[next(iter(pending))]  # oldest first (insertion order)
        pending[key] = (sid, digest, name, now)
        requests = self.daemon.idempotent_requests
        while len(requests) >= MAX_PENDING_KEYS:
            del requests[next(iter(requests))]
        requests[self.reply_to[1]] = key

    def execute(self) -> Any:
        if self.daemon.draining:
            raise ApiError("draining", "the daemon is stopping and stopping its sessions (serve --drain): "
                           "no new sessions; start it again, then retry")
        key = self.arg("idempotency_key", str, None, check=lambda s: 0 < len(s) <= 200 and s.isprintable(),
                       hint="1-200 printable characters")
        digest = _request_digest(self.body)
        if key is not None:
            replay = self._replayed(key, digest)
            if replay is not None:
                return replay
        workflow = self.arg("workflow", str, check=lambda s: 0 < len(s) <= 300, hint="a workflow name")
        params = self.arg("params", dict, {})
        name = self.arg("name", str, None, check=lambda s: 0 < len(s) <= 200, hint="1-200 characters")
        limits = _limits(self.body)
        d = self.daemon
        check = d.check_workflow(workflow, params)
        if isinstance(limits.budget, float | int) and not math.isfinite(limits.budget):
            raise ApiError("bad_limits", "budget must be a finite amount of USD")
        if not check.get("ok"):
            raise ApiError(check.get("code", "bad_params"), check.get("message", "invalid workflow"),
                           check.get("details"))
        params = check.get("params", params)
        sid = secrets.token_hex(6)
        name = name or f"{workflow.rsplit(':', 1)[-1]}-{sid[:6]}"
        workdir = d.layout.sessions_dir / sid / "work"
        created = {"workflow": workflow, "name": name, "params": params, "limits": limits.to_dict(),
                   "workdir": str(workdir)}
        if key is not None:
            created.update(idempotency_key=key, request_digest=digest)
            self._remember(key, sid, digest, name)
        d.post_event(sid, "session.created", created, reply_to=self.reply_to)
        spec = {"session_id": sid, "workflow": workflow, "params": params, "workdir": str(workdir),
                "endpoint": d.info.runners, "key": d.info.key, "secret_names": d.cfg.secret_env,
                "models": d.cfg.models, "prices": d.cfg.prices, "max_message": d.cfg.max_message,
                "mcp_servers": d.cfg.mcp_servers,
                "secrets": d.secrets}
        try:
            d.supervisor.launch(sid, spec, limits)
        except Exception as exc:  # noqa: BLE001 - reported as the session's end and to the client
            d.post_event(sid, "session.ended", {"status": "failed", "reason": f"launch failed: {exc}",
                                                "ended_by": "launch"})
        return DEFERRED


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
