"""Session requests: list, get, stop, kill, inspect; and the request checks ``session.start`` shares
(limits, where the client stands, agent roles, tags: :mod:`labd.daemon.api.start`)."""

from __future__ import annotations

import math
from typing import Any

import orjson

from labd.daemon.api.base import DEFERRED, ApiError, Request, register
from labd.daemon.api.roles import agent_roles
from labd.daemon.limits import Limits
from labd.ipc.errors import LabdError
from labd.ipc.events import STATUSES, TERMINAL_STATUSES
from labd.ipc.limits import check_limits
from labd.runner.workflows.registry import WorkflowError, canonical
from labd.store.db import unreachable

__all__ = ["resolve_ref", "resolve_session", "session_name", "where_from", "live_view", "list_params",
           "LIST_PARAMS_MAX"]


def resolve_session(req: Request) -> dict[str, Any]:
    """The session a request names by id, unique id prefix, or name."""
    ref = req.arg("session", str, check=lambda s: 0 < len(s) <= 200, hint="a session id or name")
    return resolve_ref(req.daemon.store, ref)


def resolve_running(req: Request) -> dict[str, Any]:
    """As :func:`resolve_session`, for a stop or kill: while the store cannot be read (a database server
    restarting), a running session named by its whole id is still found, from the supervisor (they were refused
    ``store_unavailable`` though the daemon holds the runner: admin retest)."""
    try:
        return resolve_session(req)
    except Exception as exc:
        ref = req.body.get("session")
        if unreachable(exc) and isinstance(ref, str) and ref in req.daemon.supervisor.running:
            return {"id": ref, "status": "running"}
        raise


def resolve_ref(store: Any, ref: str) -> dict[str, Any]:
    """The session ``ref`` names: an id, a unique id prefix, or a name. Names may repeat: the one session with that
    name that has not ended, else the newest with it (two unended sessions with one name: ``ambiguous``)."""
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
        live = store.live_named(ref)  # not only among the newest matches: a long run outlives many named like it
        if len(live) > 1:
            raise ApiError("ambiguous", f"{len(live)} sessions named {ref!r} have not ended; name one by its id",
                           {"matches": [r["id"] for r in live]})
        return (live or by_name)[0]  # `labd stop study` means the study that runs, not the last one that ended
    if len(found) > 1:  # named, so that the one meant can be picked (power-user review)
        named = ", ".join(f"{r['id']} ({r['name']})" for r in found[:5]) + (", ..." if len(found) > 5 else "")
        raise ApiError("ambiguous", f"{ref!r} matches {len(found)} sessions: {named}; give more of the id",
                       {"matches": [r["id"] for r in found]})
    return found[0]


_HEX = frozenset("0123456789abcdefABCDEF")


def session_name(req: Request) -> str | None:
    """The ``name`` field of a request that creates a session: 1-200 printable characters (a newline or an escape
    sequence in a name would forge lines of `labd show` and `ps`, and the process title), not only hex digits (such
    a name would shadow the ids that start with it: ``labd show beef`` must not mean two things)."""
    name = req.arg("name", str, None, check=lambda s: 0 < len(s) <= 200 and s.isprintable(),
                   hint="1-200 printable characters (no newline, tab or control character)")
    if name is not None and set(name) <= _HEX:
        raise ApiError("bad_request", f"session name {name!r} is made of hex digits only, so it would be read as "
                       "the start of a session id; add another character (e.g. run-" + name[:20] + ")")
    return name


def _limits(body: dict[str, Any], default_procs: int | None = None, default_output: Any = None, *,
            cluster: bool = False) -> Limits:
    """The ``limits`` of a request checked (:func:`labd.ipc.limits.check_limits`, the rules clients check too);
    ``cluster``: the session runs on a Ray cluster."""
    try:
        return Limits.from_dict(check_limits(body.get("limits"), procs=body.get("procs", default_procs),
                                             default_output=default_output, cluster=cluster))
    except LabdError as exc:
        raise ApiError(exc.code, exc.message, exc.details) from None


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
    overrides = req.arg("agents", dict, {}, check=lambda a: len(a) <= 100 and all(
        isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 100 and 0 < len(v) <= 100 for k, v in a.items()),
        hint="an object {role: other role}")
    roles = agent_roles(req.daemon)
    unknown = sorted(v for v in overrides.values() if v not in roles)
    if unknown:
        raise ApiError("bad_agents", f"unknown agent roles {unknown}; known: {', '.join(sorted(roles))}")
    return roles, overrides


def _valid_tags(tags: Any) -> bool:
    return len(tags) <= 50 and all(isinstance(k, str) and 0 < len(k) <= 100 and isinstance(v, str)
                                   and len(v) <= 300 for k, v in tags.items())


def live_view(req: Request, row: dict[str, Any], live: dict[str, dict[str, Any]] | None = None,
              positions: dict[str, int] | None = None) -> dict[str, Any]:
    """A session row plus live figures from the monitor (for sessions still running) and, for a session not
    started yet, its place in the run queue. ``live``/``positions``: precomputed for a whole list."""
    out = dict(row)
    sid = row["id"]
    out["live"] = live.get(sid) if live is not None else req.daemon.monitor.snapshot_of(sid)
    out["last_seen"] = req.daemon.last_seen.get(sid)
    if (pausing := req.daemon.supervisor.pausing(sid, row["status"])) is not None:
        out["pausing"] = pausing  # asked, not reached yet: every client shows it (the dashboard's asking tab did)
    if row["status"] in ("created", "queued"):
        queue = req.daemon.supervisor.queue
        out["queue_position"] = positions.get(sid) if positions is not None else queue.position(sid)
        out["queue_priority"] = queue.priority_of(sid)
        if out["queue_position"] is not None:  # queued: its session.queued may be a batch behind session.created
            out["status"] = "queued"
    return out


GET_STEPS = 2000  # session.get: the newest this many DAG nodes and state transitions (steps_limit asks for more)
#: the most bytes of JSON a session's ``params`` take in a ``session.list`` row: every session of a list must
#: fit one reply, so large params stay out of it (``session.get`` has them all)
LIST_PARAMS_MAX = 4000


def list_params(params: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """``params`` as a ``session.list`` row carries them, and how many were left out: all of them if their JSON
    is at most :data:`LIST_PARAMS_MAX` bytes, else those that fit in that many, in order (a large one is
    left out, the smaller ones after it are kept: a submitted function's ``function`` names it in ``labd ps``)."""
    if len(orjson.dumps(params)) <= LIST_PARAMS_MAX:
        return params, 0
    kept: dict[str, Any] = {}
    size = 2  # {}
    for key, value in params.items():
        size_of = len(orjson.dumps(key)) + len(orjson.dumps(value)) + 2  # "key":value,
        if size + size_of <= LIST_PARAMS_MAX:
            kept[key] = value
            size += size_of
    return kept, len(params) - len(kept)


def _list_row(req: Request, row: dict[str, Any], live: dict[str, dict[str, Any]],
              positions: dict[str, int]) -> dict[str, Any]:
    out = live_view(req, row, live, positions)
    out["params"], omitted = list_params(row["params"])
    if omitted:
        out["params_omitted"] = omitted
    return out


@register
class InspectWorkflow(Request):
    """What ``session.start`` would run: the workflow's doc and parameters, resolved where the client stands."""

    type = "workflow.inspect"

    def execute(self) -> Any:
        workflow, _cwd, path = where_from(self)
        params = self.arg("params", dict, {})
        check = yield from self.daemon.check_workflow(workflow, params, path)  # waits without blocking
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
        self.filters("status", "limit", "workflow", "tags", "since", "before")  # honoured or refused, never ignored
        # `[]` is all, as the protocol says (it matched none: a GUI sending its empty status filter listed nothing)
        status = self.arg("status", list, None, check=lambda s: all(x in STATUSES for x in s),
                          hint=f"a list of statuses ({', '.join(STATUSES)})") or None
        limit = self.arg("limit", int, 200, check=lambda n: 0 < n <= 10_000, hint="1-10000")
        workflow = self.arg("workflow", str, None, check=lambda s: 0 < len(s) <= 300, hint="a workflow name")
        tags = self.arg("tags", dict, None, check=_valid_tags, hint="an object of str -> str tags")
        since = self.arg("since", (int, float), None, check=lambda t: math.isfinite(t) and t >= 0,
                         hint="a time in seconds since the epoch")
        before = self.arg("before", str, None, check=lambda c: read_cursor(c) is not None,
                          hint="the `next` of an earlier session.list reply")
        # a session just queued may still be stored `created` (live_view shows it `queued`): the filter applies to
        # the status shown, so `queued` also reads stored `created` rows
        stored = [*status, "created"] if status is not None and "queued" in status else status
        # one more than asked for tells whether the list is complete: a list cut at its limit must not look whole
        rows = self.daemon.store.sessions(status=stored, limit=limit + 1, workflow=workflow, tags=tags,
                                          since=None if since is None else float(since),
                                          before=None if before is None else read_cursor(before))
        more = len(rows) > limit
        rows = rows[:limit]
        live, positions = self.daemon.monitor.snapshot(), self.daemon.supervisor.queue.positions()
        shown = [_list_row(self, r, live, positions) for r in rows]
        return {"sessions": shown if status is None else [r for r in shown if r["status"] in status],
                "more": more, "next": list_cursor(rows[-1]) if more else None}


def list_cursor(row: dict[str, Any]) -> str:
    """Where a page of ``session.list`` ended: ``<created_at>/<id>`` of its last session read (the ``next`` of the
    reply, the ``before`` of the request for the next page)."""
    return f"{float(row['created_at'])!r}/{row['id']}"


def read_cursor(text: str) -> tuple[float, str] | None:
    """A ``before`` cursor as ``(created_at, id)``; None if it is not one :func:`list_cursor` makes."""
    at, sep, sid = text.partition("/")
    if not sep or not 0 < len(sid) <= 64 or not sid.isascii() or not sid.isalnum() or len(at) > 40:
        return None
    try:
        created = float(at)
    except ValueError:
        return None
    return (created, sid) if math.isfinite(created) else None


@register
class GetSession(Request):
    type = "session.get"

    def execute(self) -> Any:
        row = resolve_session(self)
        most = self.arg("steps_limit", int, GET_STEPS, check=lambda n: 0 <= n <= 100_000, hint="0 to 100000")
        out = live_view(self, row)
        # The newest nodes and transitions: a days-long session has tens of thousands of agent turns, and all of
        # them made every reply about it (labd show, the dashboard's page, MCP) too large to send. Only those are
        # read: reading all 30,000 nodes of one took this loop (and every other client) 1.2 s per request.
        store, sid = self.daemon.store, row["id"]
        out["steps"], total = store.newest_steps(sid, most) if most else ([], store.newest_steps(sid, 1)[1])
        if total > most:
            out["steps_omitted"] = total - most
        out["history"] = store.history(sid, most) if most else []
        if len(out["history"]) == most and (done := store.count_history(sid)) > most:
            out["history_omitted"] = done - most
        if (runs := store.earlier_runs([sid]).get(sid)) is not None:  # resumed: started_at is its last run's
            out["runs"], out["earlier_runs_seconds"] = runs
        return {"session": out}


@register
class Stop(Request):
    type = "session.stop"

    def execute(self) -> Any:
        self.only("session", "grace", done="nothing was stopped")  # a misspelt `grace` stopped with the default
        row = resolve_running(self)
        grace = self.arg("grace", (int, float), self.daemon.cfg.stop_grace, check=lambda g: 0 <= g <= 3600,
                         hint="seconds between 0 and 3600")
        if self.daemon.supervisor.stop_claimed(row["id"], "client", grace):  # stopped once its runner proves itself
            return {"session": row["id"], "stopping": True, "grace": grace, "awaiting_runner": True}
        if row["id"] in self.daemon.supervisor.queue:  # answered once its end is in: a resume right after sees it
            self.daemon.defer(self.reply_to, lambda _seq, _p: {"session": row["id"], "stopping": True, "grace": grace,
                                                                "was_queued": True})
            self.daemon.supervisor.dequeue(row["id"], "client", self.reply_to)
            return DEFERRED
        run = self.daemon.supervisor.running.get(row["id"])
        already = run is not None and run.step is not None  # a stop (or kill) in progress goes on as it was asked
        if row["status"] in TERMINAL_STATUSES or not self.daemon.supervisor.stop(row["id"], "client", grace):
            raise _not_running(self, row)
        if already and run is not None:
            return {"session": row["id"], "stopping": True, "grace": run.grace if run.step == "cooperative" else 0.0,
                    "already_stopping": True}
        return {"session": row["id"], "stopping": True, "grace": grace}


@register
class Kill(Request):
    type = "session.kill"

    def execute(self) -> Any:
        self.only("session", done="nothing was killed")
        row = resolve_running(self)
        if self.daemon.supervisor.stop_claimed(row["id"], "client", None):  # killed once its runner proves itself
            return {"session": row["id"], "killing": True, "awaiting_runner": True}
        if row["id"] in self.daemon.supervisor.queue:  # answered once its end is in (as session.stop)
            self.daemon.defer(self.reply_to, lambda _seq, _p: {"session": row["id"], "killing": True,
                                                                "was_queued": True})
            self.daemon.supervisor.dequeue(row["id"], "client", self.reply_to)
            return DEFERRED
        if row["status"] in TERMINAL_STATUSES or not self.daemon.supervisor.kill(row["id"], "client"):
            raise _not_running(self, row)
        return {"session": row["id"], "killing": True}


def _not_running(req: Request, row: dict[str, Any]) -> ApiError:
    """Why a stop or kill found no runner: between the runner's exit and the commit of its end the store still says
    ``running`` (the reply said "not running (status running)")."""
    if row["status"] not in TERMINAL_STATUSES and req.daemon.supervisor.stopping(row["id"]):
        return ApiError("not_running", f"session {row['id']} has just ended (its end is being recorded)")
    return ApiError("not_running", f"session {row['id']} is not running (status {row['status']})")
