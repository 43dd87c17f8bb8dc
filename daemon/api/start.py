"""``session.start``: a new session from a request (validated, recorded in ``session.created``, queued), its
idempotency keys, and what its runner gets when it launches (also after a requeue, resume or branch)."""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from typing import Any, NamedTuple

import orjson

from labd.daemon.api.base import DEFERRED, ApiError, Request, register
from labd.daemon.api.policy import runner_policy, session_rules
from labd.daemon.api.roles import agent_roles
from labd.daemon.api.sessions import _limits, _roles, _valid_tags, session_name, where_from
from labd.daemon.limits import Limits
from labd.daemon.queue import Queued, RunQueue
from labd.ipc.functions import FUNCTION_WORKFLOW, MAX_PAYLOAD, MAX_PAYLOAD_TEXT, MAX_RESULT, check_params
from labd.ipc.signing import derive_key
from labd.ipc.units import format_size
from labd.runner.carry import REPLAY_FILE
from labd.store.schema import IDEMPOTENCY_RETENTION

__all__ = ["PendingStart", "REPLAY_FILE", "Start", "entry_extra", "priority_of", "refuse_never_fits", "requeue",
           "session_spec"]

#: the fields of a ``session.start`` (any other is refused: ignored, a misspelt ``limits`` ran a session without them)
START_FIELDS = ("workflow", "params", "name", "limits", "cwd", "pythonpath", "network", "tags", "priority", "agents",
                "policy", "payload", "idempotency_key", "placement", "procs")  # procs: an older client's place for it
MAX_PENDING_KEYS = 10_000  # in-flight idempotency keys remembered in memory (each a few dozen bytes)
#: a replay's seed, beside its work directory (written by daemon/api/lineage.py, read by the runner)
MAX_WAITING_RETRIES = 64  # retries of one uncommitted start held for its commit; more are answered at once


def digest_of(what: Any) -> str:
    """The sha256 of what a keyed request asks for (JSON, keys sorted), stored with its idempotency key so that a
    key re-used for a different request is refused rather than replayed (starts, skill saves and imports)."""
    return hashlib.sha256(orjson.dumps(what, option=orjson.OPT_SORT_KEYS, default=repr)).hexdigest()


def idempotency_key(req: Request) -> str | None:
    """A keyed request's ``idempotency_key`` (None without one): 1-200 printable characters."""
    key = req.arg("idempotency_key", str, None, check=lambda s: 0 < len(s) <= 200 and s.isprintable(),
                  hint="1-200 printable characters")
    return None if key is None else str(key)


def _request_digest(body: dict[str, Any]) -> str:
    """What a start asks for, so a key re-used for a different request is refused rather than replayed."""
    # everything but the key and where the client stands (a retry from another shell is the same request);
    # absent and empty (null, {}, [], "") mean the same
    return digest_of({k: v for k, v in body.items()
                      if k not in ("idempotency_key", "cwd", "pythonpath") and v not in (None, {}, [], "")})


class PendingStart(NamedTuple):
    """An idempotent ``session.start`` answered but not yet committed (``Daemon.idempotent_starts``, by key)."""

    session: str
    digest: str  # of the request: a retry with the same key must ask for the same session
    name: str  # the session's name ("" until the request named it, which may be after a workflow check)
    at: float  # time.time() when remembered (entries older than IDEMPOTENCY_RETENTION are dropped)
    request: str  # the request id whose reply is deferred (retries wait on it)


@register
class Start(Request):
    """Start a session. With ``idempotency_key`` a retry of the same request returns the session the first
    one started (found in memory while its creation is not yet committed, then in the store, where the key
    is committed with the session and kept :data:`IDEMPOTENCY_RETENTION` seconds); never a second session."""

    type = "session.start"
    #: set by requests that start a session from another one (daemon/api/lineage.py): recorded on
    #: session.created as {parent_id, origin, branch_node}
    lineage: dict[str, Any] | None = None

    def prepare(self, sid: str) -> None:
        """Called with the new session's id before its creation is posted (a replay writes its seed here)."""

    def _replayed(self, key: str, digest: str) -> Any:
        d = self.daemon
        pending = d.idempotent_starts
        hit = pending.get(key)
        if hit is not None:
            sid, first, name = hit.session, hit.digest, hit.name
            if first == digest:
                waiters = d.idempotent_waiters.setdefault(hit.request, [])
                if len(waiters) < MAX_WAITING_RETRIES:
                    # the first start is not committed yet: answer with it, so the session it names exists
                    waiters.append(self.reply_to)
                    return DEFERRED
        else:
            row = d.store.idempotent_start(key, time.time())
            if row is None:
                return None
            sid, first, name = row["session_id"], row["digest"], None
        if first and first != digest:
            raise ApiError("idempotency_conflict", "this idempotency_key was used for a different session.start "
                           "(another workflow, params, name, limits, ...); use a new key per request",
                           {"session": sid})
        stored = d.store.session(sid)
        run = d.supervisor.running.get(sid)
        return {"session": sid, "name": stored["name"] if stored else name,
                "pid": run.pid if run and run.pid > 0 else None, "replayed": True}

    def _remember(self, key: str, sid: str, digest: str, name: str) -> None:
        pending = self.daemon.idempotent_starts
        now = time.time()
        # normally emptied as ingest commits; bounded in case a store outage holds starts for a long time
        for k in [k for k, v in pending.items() if now - v.at > IDEMPOTENCY_RETENTION]:
            del pending[k]
        while len(pending) >= MAX_PENDING_KEYS:
            del pending[next(iter(pending))]  # oldest first (insertion order)
        pending[key] = PendingStart(sid, digest, name, now, self.reply_to[1])
        requests = self.daemon.idempotent_requests
        while len(requests) >= MAX_PENDING_KEYS:
            del requests[next(iter(requests))]
        requests[self.reply_to[1]] = key

    def execute(self) -> Any:  # a generator: it waits for a user workflow's check (daemon/checks.py)
        if self.type == Start.type:  # (a replay's body is made by the daemon, with fields of its own)
            # `limit` for `limits` or `param` for `params` ran the session without them
            self.only(*START_FIELDS, done="nothing was started")
        if self.daemon.draining:
            raise ApiError("draining", "the daemon is stopping and stopping its sessions (serve --drain): "
                           "no new sessions; start it again, then retry")
        key = idempotency_key(self)
        digest = _request_digest(self.body)
        if key is not None:
            replay = self._replayed(key, digest)
            if replay is not None:  # a retry of a start already accepted: its answer, store or no store
                return replay
        refuse_while_store_down(self.daemon)
        skill = None
        ref = self.body.get("workflow")
        if isinstance(ref, str) and ref.startswith("skill:"):  # a saved skill: its workflow, params and plan
            from labd.daemon.api.skills import expand_skill

            wf, expanded, skill = expand_skill(self.daemon, ref, self.arg("params", dict, {}))
            self.body = {**self.body, "workflow": wf, "params": expanded}
            saved_path = skill.pop("sys_path")
            if saved_path:  # after the client's own directories, which win
                mine = self.arg("pythonpath", list, [])
                self.body["pythonpath"] = (mine + [p for p in saved_path if p not in mine])[:100]
            if not self.body.get("name"):
                self.body["name"] = f"skill-{skill['name']}-{secrets.token_hex(3)}"[:200]
        workflow, _cwd, path = where_from(self)
        params = self.arg("params", dict, {})
        name = session_name(self)
        placement = _placement(self)  # where it runs: None (here) or a Ray resource request
        limits = _limits(self.body, self.daemon.cfg.procs or None, self.daemon.cfg.max_output,
                         cluster=placement is not None)
        priority = self.arg("priority", int, 0, check=lambda p: -1000 <= p <= 1000, hint="an integer -1000..1000")
        tags = self.arg("tags", dict, None, check=_valid_tags, hint="an object of up to 50 str -> str tags")
        d = self.daemon
        network = self.arg("network", (bool, str), d.cfg.sandbox.network,
                           check=lambda v: isinstance(v, bool) or v in ("on", "off"), hint="on or off")
        network = network is True or network == "on"
        _, overrides = _roles(self)  # checked now; the runner gets the registry as it is at launch
        policy = session_rules(self)  # the session's own rules (labd run --policy FILE), validated
        # A function sent with Client.submit: its pickle travels in `payload`, is recorded in session.created
        # (not in the session row, which every session.list returns) and reaches only the runner. Never unpickled here.
        payload = self.arg("payload", str, None, check=lambda s: 0 < len(s) <= MAX_PAYLOAD_TEXT,
                           hint=f"base64 text of a pickled call of at most {MAX_PAYLOAD} bytes")
        if (payload is not None) != (workflow == FUNCTION_WORKFLOW):
            raise ApiError("bad_request", f"field 'payload' goes with workflow {FUNCTION_WORKFLOW!r}, and that "
                           "workflow needs it (use Client.submit)", {"field": "payload"})
        sid = secrets.token_hex(6)
        if key is not None:  # before the check: a retry while the workflow imports joins this start
            self._remember(key, sid, digest, name or "")
        if payload is not None:
            try:
                check: dict[str, Any] = {"ok": True, "params": check_params(params, payload)}
            except ValueError as exc:
                raise ApiError("bad_params", str(exc)) from None
        else:
            check = yield from d.check_workflow(workflow, params, path)
        if isinstance(limits.budget, float | int) and not math.isfinite(limits.budget):
            raise ApiError("bad_limits", "budget must be a finite amount of USD")
        if not check.get("ok"):
            raise ApiError(check.get("code", "bad_params"), check.get("message", "invalid workflow"),
                           check.get("details"))
        params = check.get("params", params)
        queue = d.supervisor.queue
        refuse_never_fits(queue, limits)
        label = (check.get("function") or workflow.rsplit(":", 1)[-1]) if payload is None \
            else str(params.get("function") or "function")
        name = name or f"{label.rsplit('.', 1)[-1].strip('<>')[:180]}-{sid[:6]}"
        workdir = d.layout.sessions_dir / sid / "work"
        created: dict[str, Any] = {"workflow": workflow, "name": name, "params": params,
                                   "limits": limits.to_dict(), "workdir": str(workdir)}
        if payload is not None:
            created["payload"] = payload
        if path:
            created["sys_path"] = path
        if overrides:
            created["agents"] = overrides
        if key is not None:
            created.update(idempotency_key=key, request_digest=digest)
            hit = d.idempotent_starts.get(key)
            if hit is not None:  # remembered before the check: now with the session's name
                d.idempotent_starts[key] = hit._replace(name=name)
            else:  # pushed out while the check ran (a full table): remembered again
                self._remember(key, sid, digest, name)
        if skill is not None:
            created["skill"] = skill
            if skill.get("origin_session"):
                created.update(parent_id=skill["origin_session"], origin="skill")
        if policy:
            created["policy"] = policy
        if self.lineage:
            created.update({k: v for k, v in self.lineage.items() if v is not None})
            self.prepare(sid)
        if tags:
            created["tags"] = tags
        if placement:
            created["placement"] = placement
        if priority:
            created["priority"] = priority
        sandbox = d.sandbox_spec(sid, network)  # what confines the code its agents run: recorded on the session
        created["sandbox"] = {k: sandbox[k] for k in ("level", "mechanism", "reasons", "network")} | {
            "runner": d.runner_confinement}
        d.post_event(sid, "session.created", created, reply_to=self.reply_to)
        d.supervisor.submit(queue.entry(sid, workflow, _run_params(d, params, payload), limits, str(workdir),
                                        priority, time.time(), extra=entry_extra(d, name, created)))
        return DEFERRED


def _placement(req: Any) -> dict[str, Any] | None:
    from labd.daemon.launch_routing import NO_RAY
    from labd.daemon.ray_placement import PlacementError, placement_from

    try:
        placement = placement_from(req.body, str(req.daemon.cfg.launcher.get("kind") or "template"))
    except PlacementError as exc:
        raise ApiError("bad_request", str(exc)) from None
    if placement is not None and req.daemon.launcher.ray is None:  # refused, not a session that fails to launch
        raise ApiError("bad_request", NO_RAY)
    return placement


def _run_params(d: Any, params: dict[str, Any], payload: str | None) -> dict[str, Any]:
    """The params the runner gets: a submitted function's also carry its pickle and the result size bound."""
    if payload is None:
        return params
    # the value sent back must fit one event (base64 grows it by 4/3; headroom for the envelope)
    max_result = max(0, min(MAX_RESULT, (d.cfg.max_message - 2048) * 3 // 4))
    return {**params, "payload": payload, "max_result": max_result}


def session_spec(d: Any, q: Queued) -> dict[str, Any]:
    """The runner's start spec for a session (built when it launches, so a queued one gets current settings:
    models, prices, MCP servers and the agent registry as they are then)."""
    roles: dict[str, Any] | None
    try:
        roles = agent_roles(d)
    except ApiError:
        roles = None  # checked at session.start; a registry file broken since then: the built-in roles
    extra = dict(q.extra)
    network = bool(extra.pop("network", d.cfg.sandbox.network))
    extra["policy"] = runner_policy(d, extra.pop("policy", None))  # the daemon's rules, then the session's
    if (d.layout.sessions_dir / q.sid / "durable.seed.json").exists():  # a resume or branch (api/durable.py)
        extra["durable"] = True
    seed = d.layout.sessions_dir / q.sid / REPLAY_FILE  # labd replay (daemon/api/lineage.py); also after requeue
    if seed.exists():
        extra["replay_seed"] = str(seed)
    # The runner's own key, derived for this session and run: it signs for this session only, and only until the
    # run ends. Ingest knows which run it verifies (the continuation it last committed; a plain dict read from
    # this thread: it was set before the commit that let this session launch).
    run = d.ingest.run_seqs.get(q.sid, 0)
    return {"session_id": q.sid, "workflow": q.workflow, "params": q.params, "workdir": q.workdir,
            "endpoint": d.info.runners, "key": derive_key(d.info.key_bytes, q.sid, run).hex(),
            "sandbox": d.sandbox_spec(q.sid, network), "confine": d.runner_confine_spec(q.sid),
            "secret_names": d.cfg.secret_env,
            "models": d.cfg.models, "prices": d.cfg.prices, "max_message": d.cfg.max_message,
            "mcp_servers": d.cfg.mcp_servers, "roles": roles, "secrets": d.secrets,
            "limits": q.limits.to_dict(), **extra}


def entry_extra(d: Any, name: str, created: dict[str, Any]) -> dict[str, Any]:
    """What a queued session's runner needs beyond workflow, params and limits, from its ``session.created``
    payload: one rule for a start, a requeue after a restart, a resume and a branch."""
    return {"name": name, "sys_path": created.get("sys_path") or [], "agent_overrides": created.get("agents") or {},
            "policy": created.get("policy") or [],
            "network": bool((created.get("sandbox") or {}).get("network", d.cfg.sandbox.network)),
            "placement": created.get("placement")}


def refuse_never_fits(queue: RunQueue, limits: Limits) -> None:
    """Refuse (``bad_limits``) a session that could never start under the daemon's capacity (its memory limit is
    more than ``memory_total``): queued, it would wait at the head of the run queue for ever, blocking every session
    behind it. One rule for a start (and a replay), a resume and a branch."""
    if queue.never_fits(limits):
        raise ApiError("bad_limits", f"memory limit {format_size(limits.memory)} is more than the daemon's whole "
                       f"memory_total ({format_size(queue.memory_total)}): the session could never start",
                       {"memory": limits.memory, "memory_total": queue.memory_total})


def refuse_while_store_down(d: Any) -> None:
    """New sessions are refused while the store cannot be written: accepted, they waited unrecorded, the client
    timed out ("is it running?"), the user retried, and every retry ran once the store was back."""
    down = store_down(d)
    if down is not None:
        raise ApiError("store_unavailable", f"the store cannot be written just now ({down[1]}); nothing was started: "
                       "retry once it is back (labd status)")


def store_down(d: Any) -> tuple[float, str] | None:
    """(since, why) while the store cannot be written: a commit failed (a full disk, a lock held elsewhere, a server
    gone), or, on PostgreSQL, the connection holding its lock was lost (an idle daemon's first sign: its starts were
    accepted, run unrecorded, and the client timed out: admin retest); else None."""
    ingest = getattr(d, "ingest", None)
    if ingest is not None and ingest.store_down:
        return ingest.store_down_since, ingest.store_error or "its last commit failed"
    lock = getattr(d, "store_lock", None)
    if lock is not None and lock.lost is not None:
        return lock.lost[0], f"the database server does not answer: {lock.lost[1]}"
    return None


def priority_of(created: dict[str, Any], last_queued: dict[str, Any] | None) -> int:
    """A session's run-queue priority, from its ``session.created`` payload and its last ``session.queued`` payload:
    that last submission's (a resume or a re-queue is one), else the one it was created with (records from before
    ``session.created`` carried it have it only in ``session.queued``). The one place it is derived."""
    if last_queued and "priority" in last_queued:
        return int(last_queued["priority"] or 0)
    return int(created.get("priority") or 0)


def requeue(d: Any, rows: list[dict[str, Any]], *, submit: bool = False) -> int:
    """Put the sessions stored as ``queued`` (``rows``) back in the run queue, in their order; at daemon start.
    (One whose runner the last daemon had already forked is not among them: it is adopted once that runner proves
    itself, daemon/orphans.py ``Claims``.) ``submit``: sessions stored ``created`` that never reached the queue
    (the last daemon died between recording one and queueing it): submitted as a start would (queued with a
    ``session.queued`` if they must wait)."""
    ids = [row["id"] for row in rows]
    first = d.store.first_events(ids, ["session.created"])
    # Where each stood: its *last* submission (a resume or a re-queue is one) with that submission's priority and
    # time; the first one would put a resumed session back where it was first queued, with its old priority.
    queued = d.store.last_events(ids, ["session.queued"])
    for row in rows:
        at, last = queued.get((row["id"], "session.queued"), (row["created_at"], {}))
        c = first.get((row["id"], "session.created"), {})
        entry = d.supervisor.queue.entry(
            row["id"], row["workflow"], _run_params(d, row["params"], c.get("payload")),
            Limits.from_dict(row["limits"]), row["workdir"], priority_of(c, last), at,
            extra=entry_extra(d, row["name"], c))
        if submit:
            d.supervisor.submit(entry)
        else:
            d.supervisor.requeue(entry)
    return len(rows)
