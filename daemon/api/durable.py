"""Durable sessions: ``session.resume`` of an ended session, and ``session.branch`` from a step.

Both hand a new runner a *seed* (``<session dir>/durable.seed.json``, made by :mod:`labd.daemon.api.seed`): the
completed steps of the record by position, the manifest to restore the work directory from, where node ids and the
event sequence go on.
The runner is confined and cannot read the store, so the daemon writes the seed into the session directory
before the launch; the file also makes a relaunch after a daemon restart (the session is ``queued``) a
continuation again. See labd.runner.durable and docs/design.md, "Durable steps".
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Generator
from typing import Any

from labd.daemon.api.base import DEFERRED, ApiError, Request, register
from labd.daemon.api.branch_keys import branch_digest, made_before, wait_for_first
from labd.daemon.api.seed import branch_dirs, build_seed, write_seed
from labd.daemon.api.sessions import _limits, resolve_ref, resolve_session
from labd.daemon.api.start import (
    _run_params,
    entry_extra,
    idempotency_key,
    priority_of,
    refuse_never_fits,
    refuse_while_store_down,
)
from labd.daemon.limits import Limits
from labd.daemon.reads import Read
from labd.runner.checkpoint import OBJECTS_DIR
from labd.store.checkpoints import checkpoints, max_node_number, recorded_files, shipped_files, step_row

__all__ = ["resume_ended", "RESUMABLE"]

#: the statuses a runner can be continued from (a budget stop ends as failed)
RESUMABLE = ("failed", "lost", "cancelled")
MAX_BRANCHES = 20
_TEXT = 10_000


def _merged_limits(row: dict[str, Any], override: Any, created: dict[str, Any] | None = None) -> Limits:
    """A session's stored limits with a request's ``override`` checked over them. ``created``: the session's
    ``session.created`` payload, which says where it runs (a Ray session's CPUs are its node's, up to the cluster
    bound); None: not read yet, checked with the cluster bound (then again with :func:`_placed`)."""
    if not override:  # absent, or a falsy value: none, as session.start takes it (docs/protocol.md)
        return Limits.from_dict(row["limits"])
    if not isinstance(override, dict):
        raise ApiError("bad_request", "field 'limits' must be an object", {"field": "limits"})
    base = {k: v for k, v in (row["limits"] or {}).items() if v is not None}
    return _limits({"limits": {**base, **override}}, cluster=created is None or bool(created.get("placement")))


def _priority(d: Any, sid: str, created: dict[str, Any]) -> int:
    """The run-queue priority session ``sid`` was given, which its resumes and branches keep (they waited behind
    later, lower ones at 0): :func:`~labd.daemon.api.start.priority_of`, as a restart's re-queue reads it."""
    queued = d.store.last_events([sid], ["session.queued"]).get((sid, "session.queued"))
    return priority_of(created, queued[1] if queued else None)


def _placed(limits: Limits, created: dict[str, Any]) -> Limits:
    """``limits`` checked again now that the session's ``session.created`` says where it runs: a session of this
    machine may not ask for more CPUs than it has (a resume checks its limits before its record is read)."""
    if created.get("placement"):
        return limits
    return _limits({"limits": limits.to_dict()})


def _ran_on_ray(d: Any, sid: str) -> bool:
    placement = d.store.created(sid).get("placement")
    return isinstance(placement, dict) and placement.get("on", "ray") == "ray"


def refuse_unshipped(d: Any, sid: str, cps: list[dict[str, Any]], code: str, what: str) -> None:
    """A session that ran on Ray has its checkpoints' objects at home only as far as its runner shipped them
    (``checkpoint.object``, since 2026-12-07, within ``[launcher] ship_max_bytes``); one with checkpoints and no
    objects here cannot be ``what`` (resumed, branched): refused, saying why (the generic "checkpoint files are
    gone" did not). Called for a session that ran on Ray only."""
    if not cps or (d.layout.sessions_dir / sid / OBJECTS_DIR).is_dir():
        return
    raise ApiError(code, f"session {sid} ran on Ray and its checkpoints are not here, so it cannot be {what}: a labd "
                   "before 2026-12-07 kept them on the node, and past [launcher] ship_max_bytes a runner stops "
                   "shipping them; start it again, or replay it (labd replay)", {"placement": "ray"})


def ray_hint(exc: ApiError) -> ApiError:
    """``exc`` (a checkpoint that cannot be used: an object missing) with why, for a session that ran on Ray."""
    if exc.code != "no_checkpoint":
        return exc
    return ApiError(exc.code, f"{exc.message} (it ran on Ray: its runner ships checkpoint objects home within "
                    "[launcher] ship_max_bytes, and stops past it)", {**exc.details, "placement": "ray"})


def resume_ended(req: Request, row: dict[str, Any]) -> Generator[Read, Any, Any]:
    """``session.resume`` of an ended session: a new runner continues it from its last completed step. A handler
    that waits (:mod:`labd.daemon.reads`): the record the seed is built from (every checkpoint, the manifests, the
    result objects checked, the files recorded) is read on a worker thread, not on the request loop."""
    d, sid, status = req.daemon, row["id"], row["status"]
    sup = d.supervisor
    _refuse_resume(d, sid, status)
    reason = req.arg("reason", str, "", check=lambda s: len(s) <= 1000, hint="text of at most 1000 characters")
    limits = _merged_limits(row, req.body.get("limits"))
    budget = req.body.get("budget")
    if budget is not None:
        # cluster: a Ray session's CPUs may be beyond this machine's; where it runs is read below (_placed)
        limits = _limits({"limits": {**limits.to_dict(), "budget": budget}}, cluster=True)
    refuse_never_fits(sup.queue, limits)  # queued, it would block the run queue for good
    req_id = req.reply_to[1]
    # from here the session is being resumed: a second resume is refused while this one reads its record
    sup.continuing[sid] = req_id
    sup.preparing.add(req_id)
    deferred = False
    try:
        store, session_dir = d.store, d.layout.sessions_dir / sid

        def prepare() -> tuple[list[dict[str, Any]], dict[str, Any], list[str], dict[str, Any]]:
            cps = checkpoints(store, sid)
            on_ray = _ran_on_ray(d, sid)
            if on_ray:
                refuse_unshipped(d, sid, cps, "not_resumable", "resumed")
            try:
                seed = build_seed(cps, session_dir / OBJECTS_DIR, mode="resume",
                                  node_base=max_node_number(store, sid), first_seq=int(row["runner_seq"]) + 1,
                                  spent=float(row.get("cost") or 0.0),  # the session's whole spend, as ingest counts
                                  recorded=recorded_files(store, sid),  # the restore records its changes against it
                                  # a remote runner's: the home's copy of its files (a read of every file.shipped)
                                  shipped=shipped_files(store, sid) if on_ray else None)
            except ApiError as exc:
                raise (ray_hint(exc) if on_ray else exc) from None
            interrupted = [st["node_id"] for st in store.steps(sid) if st["status"] in ("running", "paused")]
            return cps, seed, interrupted, store.created(sid)

        try:
            cps, seed, interrupted, c = yield Read(prepare, "resume seed")
        finally:
            sup.preparing.discard(req_id)
        if store.session(sid) is None:  # deleted (labd rm, retention) while its record was read
            raise ApiError("not_found", f"no session {sid!r}: it was deleted while being resumed")
        if req.body.get("limits") or budget is not None:
            limits = _placed(limits, c)
        if d.draining:
            raise ApiError("draining", "the daemon is stopping its sessions (serve --drain): no resume now")
        refuse_while_store_down(d)
        write_seed(session_dir, seed)
        why = f"resumed by client from {status}" + (f": {reason}" if reason else "") + \
            f" ({len(seed['steps'])} completed steps kept)"
        entry = sup.queue.entry(sid, row["workflow"], _run_params(d, row["params"], c.get("payload")), limits,
                                row["workdir"], _priority(d, sid, c), time.time(), extra=entry_extra(d, row["name"], c))

        def committed(seq: int, _payload: dict[str, Any]) -> dict[str, Any]:
            # The runner is submitted only now that session.continued is in the store: a session deleted (labd rm)
            # before it was committed has its continuation dropped and the request refused (not_found), and then no
            # runner may start for it. Committed, the session is queued (not terminal): a later rm is refused.
            if sup.continuing.get(sid) == req_id:
                del sup.continuing[sid]
            if sid not in sup.running and sid not in sup.queue:
                sup.submit(entry)
            return {"session": sid, "resumed": True, "from_status": status, "steps_kept": len(seed["steps"]),
                    "seq": seq}

        d.defer(req.reply_to, committed)
        deferred = True
        d.post_event(sid, "session.continued", {"by": "client", "reason": why, "from_status": status,
                                                "limits": limits.to_dict(), "checkpoints": len(cps),
                                                "interrupted": interrupted},
                     reply_to=req.reply_to)
        return DEFERRED
    finally:
        if not deferred and sup.continuing.get(sid) == req_id:  # refused (or closed) before it was deferred
            del sup.continuing[sid]


def _refuse_resume(d: Any, sid: str, status: str) -> None:
    """Refuse a resume of ``sid`` (ended ``status``) that cannot go ahead now."""
    if status not in RESUMABLE:
        hint = "branch it (labd branch) to run part of it again" if status == "completed" else "it has not ended"
        raise ApiError("not_resumable", f"session {sid} is {status}: only a failed, lost or cancelled session "
                       f"can be resumed; {hint}", {"status": status})
    sup = d.supervisor
    if sid in sup.running or sid in sup.queue:
        raise ApiError("not_resumable", f"session {sid} still has a runner")
    # a resume whose session.continued is not committed yet: the session still reads as ended, but it is resumed
    # already (a second one would post a second continuation, and submit a second runner for one session); one
    # still reading its record is not deferred yet but holds its place
    for other, req_id in list(sup.continuing.items()):
        if not d.is_deferred(req_id) and req_id not in sup.preparing:  # refused meanwhile (deleted, store refused)
            del sup.continuing[other]
    if sid in sup.continuing:
        raise ApiError("not_resumable", f"session {sid} is being resumed already")
    if d.draining:
        raise ApiError("draining", "the daemon is stopping its sessions (serve --drain): no resume now")
    refuse_while_store_down(d)


def _gone_meanwhile(store: Any, sid: str) -> ApiError | None:
    """``not_found`` if session ``sid`` was deleted while its record was read (a ``labd rm`` racing a branch): its
    steps and checkpoints vanish under the reads, which would otherwise answer ``unknown_node`` or
    ``no_checkpoint``, blaming the request for what the deletion did."""
    if store.session(sid) is None:
        return ApiError("not_found", f"session {sid} was deleted while it was read")
    return None


def _find_node(store: Any, sid: str, ref: str) -> dict[str, Any]:
    node = step_row(store, sid, ref)
    if node is None:
        every = store.steps(sid)
        steps = [s for s in every if s["kind"] != "agent"]
        named = [s for s in steps if s["name"] == ref]
        if not named:  # the code and details events.query and session.replay answer, with the nodes to branch from
            # an agent's name (its turns are nodes too, named so in `labd dag`): said, not "no node"
            turns = any(s["kind"] == "agent" and (s["name"] == ref or s.get("agent") == ref) for s in every)
            hint = (f": {ref!r} names agent turns, which are no branch point; branch from the step they ran in"
                    if turns else "")
            raise ApiError("unknown_node", f"session {sid} has no node {ref!r}{hint} (see labd dag {sid})",
                           {"node": ref, "nodes": [s["node_id"] for s in steps][:200]})
        done = [s for s in named if s["status"] == "completed"]  # a loop's steps share a name; retries too
        if len(done) > 1:
            ids = [s["node_id"] for s in done]
            raise ApiError("ambiguous", f"{len(done)} completed steps of session {sid} are named {ref!r} "
                           f"({', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}): give a node id",
                           {"node": ref, "matches": ids[:50]})
        node = done[0] if done else named[0]
    if node["kind"] == "agent":
        raise ApiError("bad_node", f"node {node['node_id']} is an agent turn; branch from a step or phase",
                       {"node": node["node_id"]})
    if node["status"] == "planned" or node.get("start_seq") is None:
        raise ApiError("no_checkpoint", f"node {node['node_id']} never ran: nothing to branch from",
                       {"node": node["node_id"]})
    return node


def _branch_record(store: Any, sid: str, ref: str) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """(the node ``ref`` names, the session's checkpoints, and when it has none, whether a step completed before that
    node started: every step is read only then)."""
    node, cps = _find_node(store, sid, ref), checkpoints(store, sid)
    done_before = not cps and any(s["kind"] == "step" and s["status"] == "completed"
                                  and (s["start_seq"] or 0) < node["start_seq"] for s in store.steps(sid))
    return node, cps, done_before


@register
class Branch(Request):
    """A new session (or ``count``) seeded from a session's record up to a node."""

    type = "session.branch"

    def execute(self) -> Any:
        d = self.daemon
        self.only("session", "from", "hypothesis", "instructions", "count", "params", "limits", "idempotency_key",
                  done="nothing was started")  # a misspelt `hypothesis` or `params` branched without it
        if d.draining:
            raise ApiError("draining", "the daemon is stopping its sessions (serve --drain): no new sessions")
        refuse_while_store_down(d)
        key = idempotency_key(self)
        if key is not None:  # a retry answers what the first attempt made (daemon/api/branch_keys.py)
            digest = branch_digest(self.body)
            store, in_flight = d.store, d.branches_in_flight
            found = made_before(store, key, digest)
            if found is None and in_flight.busy(key):
                found = yield Read(lambda: wait_for_first(store, key, digest, in_flight), "branch retry")
            if found is not None:
                return found
            in_flight.note(key, self.reply_to[1])
            try:
                return (yield from self._branch(key, digest))
            except BaseException:
                in_flight.done(key)
                raise
        return (yield from self._branch(None, None))

    def _branch(self, idem: str | None, digest: str | None) -> Any:  # idem: the idempotency key (`key` is a loop's)
        d = self.daemon
        parent = resolve_ref(d.store, self.arg("session", str, check=lambda s: 0 < len(s) <= 200,
                                               hint="a session id or name"))
        ref = self.arg("from", str, check=lambda s: 0 < len(s) <= 200, hint="a node id or step name")
        hypothesis = self.arg("hypothesis", str, None, check=lambda s: len(s) <= _TEXT,
                              hint=f"text of at most {_TEXT:,} characters")
        instructions = self.arg("instructions", str, None, check=lambda s: len(s) <= _TEXT,
                                hint=f"text of at most {_TEXT:,} characters")
        count = self.arg("count", int, 1, check=lambda n: 1 <= n <= MAX_BRANCHES, hint=f"1-{MAX_BRANCHES}")
        overrides = self.arg("params", dict, {})
        psid = parent["id"]
        if parent["status"] in ("created", "queued"):
            raise ApiError("not_started", f"session {psid} has not run yet: nothing to branch from")
        store = d.store
        # the long reads (the parent's steps, every checkpoint, a manifest per reused step, the objects) on a worker
        # thread (daemon/reads.py): on the request loop, a branch of a long session stalled every other client
        try:
            node, all_cps, done_before = yield Read(lambda: _branch_record(store, psid, ref), "branch record")
        except ApiError as exc:
            raise _gone_meanwhile(store, psid) or exc from None
        # no checkpoint at all: refused where a step completed before the node (it ran before durable steps: a
        # branch would run that step again, not reuse it); from the first step of a session that failed there,
        # there is nothing to reuse, and a branch is how its params are changed
        if not all_cps and done_before:
            raise _gone_meanwhile(store, psid) or ApiError(
                "no_checkpoint", f"session {psid} recorded no checkpoints (it ran before durable steps, or no step "
                "completed)", {"node": node["node_id"]})
        cps = [c for c in all_cps if c["seq"] < node["start_seq"]]
        c = d.store.created(psid)
        params = {**parent["params"], **overrides}
        path = c.get("sys_path") or []
        if overrides and c.get("payload") is not None:  # its runner would refuse them once the branch ran
            raise ApiError("bad_params", f"session {psid} ran a submitted function (Client.submit): its arguments are "
                           "part of the call it recorded, so a branch of it takes no params",
                           {"params": {k: "a submitted function's branch takes no params" for k in overrides}})
        if overrides and c.get("payload") is None:
            check = yield from d.check_workflow(parent["workflow"], params, path)  # waits without blocking
            if not check.get("ok"):
                raise ApiError(check.get("code", "bad_params"), check.get("message", "invalid params"),
                               check.get("details"))
            params = check.get("params", params)
        limits = _merged_limits(parent, self.body.get("limits"), c)
        refuse_never_fits(d.supervisor.queue, limits)  # before any directory is prepared
        src = d.layout.sessions_dir / psid / OBJECTS_DIR
        sids = [secrets.token_hex(6) for _ in range(count)]
        dirs = [d.layout.sessions_dir / sid for sid in sids]

        def prepare() -> dict[str, Any]:
            on_ray = _ran_on_ray(d, psid)
            if on_ray:
                refuse_unshipped(d, psid, cps, "no_checkpoint", "branched")
            try:
                seed = build_seed(cps, src, step_files=True, mode="branch", node_base=max_node_number(store, psid),
                                  hypothesis=hypothesis, instructions=instructions)
            except ApiError as exc:
                raise (ray_hint(exc) if on_ray else exc) from None
            branch_dirs(psid, src, seed, dirs)
            return seed

        try:
            seed = yield Read(prepare, "branch seed")
        except ApiError as exc:
            raise _gone_meanwhile(store, psid) or exc from None
        try:  # the daemon may have begun to stop meanwhile
            if d.draining:
                raise ApiError("draining", "the daemon is stopping its sessions (serve --drain): no new sessions")
            refuse_while_store_down(d)
        except ApiError:
            for session_dir in dirs:
                shutil.rmtree(session_dir, ignore_errors=True)
            raise
        manifest: dict[str, Any] = seed.get("files") or {}
        network = bool((c.get("sandbox") or {}).get("network", d.cfg.sandbox.network))
        made: list[dict[str, Any]] = []
        created: list[tuple[str, str, dict[str, Any], Any]] = []
        entries: list[Any] = []
        priority = _priority(d, psid, c)  # the parent's place in the run queue
        reply = {"sessions": made, "parent": psid, "node": node["node_id"], "reused": len(seed["steps"]),
                 "files": len(manifest) if seed["manifest"] else 0}
        def answer(_seq: int, _payload: Any) -> dict[str, Any]:  # once the last branch is committed
            if idem is not None:
                d.branches_in_flight.done(idem)
            return reply

        d.defer(self.reply_to, answer)
        for sid, session_dir in zip(sids, dirs, strict=True):
            name = f"{parent['name'][:150]}-branch-{sid[:6]}"
            workdir = session_dir / "work"
            payload: dict[str, Any] = {"workflow": parent["workflow"], "name": name, "params": params,
                                       "limits": limits.to_dict(), "workdir": str(workdir), "parent_id": psid,
                                       "origin": "branch", "branch_node": node["node_id"],
                                       # what its replay needs to run as it did (api/lineage.py), and compare shows
                                       "node_base": seed["node_base"]}
            payload.update((k, v) for k, v in (("hypothesis", hypothesis), ("instructions", instructions)) if v)
            if idem is not None:  # committed with the session: a retry finds it (daemon/api/branch_keys.py)
                payload.update(idempotency_key=f"{idem}#{len(made)}", request_digest=digest)
            for key in ("payload", "sys_path", "agents", "tags", "policy", "placement"):
                if c.get(key):
                    payload[key] = c[key]
            if priority:  # the parent's, however its record says it (its resumes keep it too)
                payload["priority"] = priority
            sandbox = d.sandbox_spec(sid, network)
            payload["sandbox"] = {k: sandbox[k] for k in ("level", "mechanism", "reasons", "network")} | {
                "runner": d.runner_confinement}
            last = len(made) == count - 1
            created.append((sid, "session.created", payload, self.reply_to if last else None))
            entries.append(d.supervisor.queue.entry(
                sid, parent["workflow"], _run_params(d, params, c.get("payload")), limits, str(workdir), priority,
                time.time(), extra=entry_extra(d, name, payload)))
            made.append({"session": sid, "name": name})
        # all or none: one transaction (a daemon killed between them left 2 branches of 5, and a retry made 5 more)
        d.post_events(created)
        for entry in entries:
            d.supervisor.submit(entry)
        return DEFERRED


@register
class Checkpoints(Request):
    """The checkpoints a session recorded (what resume and branch can start from)."""

    type = "session.checkpoints"

    def execute(self) -> Any:  # a generator: every checkpoint is read on a worker (daemon/reads.py)
        row = resolve_session(self)
        store = self.daemon.store
        return {"session": row["id"], "checkpoints": (yield Read(lambda: checkpoints(store, row["id"]), "checkpoints"))}
