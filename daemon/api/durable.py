"""Durable sessions: ``session.resume`` of an ended session, and ``session.branch`` from a step.

Both hand a new runner a *seed* (``<session dir>/durable.seed.json``): the completed steps of the record by
position, the manifest to restore the work directory from, where node ids and the event sequence go on.
The runner is confined and cannot read the store, so the daemon writes the seed into the session directory
before the launch; the file also makes a relaunch after a daemon restart (the session is ``queued``) a
continuation again. See labd.runner.durable and docs/design.md, "Durable steps".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import orjson

from labd.daemon.api.base import DEFERRED, ApiError, Request, register
from labd.daemon.api.sessions import _limits, resolve_ref, resolve_session
from labd.daemon.api.start import _run_params, entry_extra, refuse_never_fits, refuse_while_store_down
from labd.daemon.limits import Limits
from labd.daemon.reads import Read
from labd.ipc.safe_files import open_regular
from labd.runner.checkpoint import OBJECTS_DIR, ObjectStore, load_manifest, load_manifests
from labd.runner.durable import SEED_FILE
from labd.runner.objects import read_json_object
from labd.store.checkpoints import checkpoints, max_node_number, recorded_files, step_row

__all__ = ["resume_ended", "RESUMABLE", "write_seed"]

#: the statuses a runner can be continued from (a budget stop ends as failed)
RESUMABLE = ("failed", "lost", "cancelled")
MAX_BRANCHES = 20
_TEXT = 10_000
#: result objects are checked against their sha256 before a resume or branch up to this many bytes in all
#: (past it only that they exist: the runner checks each one it loads, and runs its step again if damaged)
VERIFY_BYTES = 16 << 20


def _seed(cps: list[dict[str, Any]], objects: Path, step_files: bool = False, **extra: Any) -> dict[str, Any]:
    """The record for a runner: completed steps by position, and the work directory of the last checkpoint
    (resolved here: small manifest changes are in the events, larger ones and whole manifests are objects).
    With ``step_files`` (a branch), each step also carries the work directory as its checkpoint recorded it: the
    branch records it as its own checkpoint of the step it reuses, which a branch of the branch restores.
    Refused (``no_checkpoint``) when an object the runner needs is gone, or a result object is damaged."""
    inline = {c["manifest"]: c["manifest_delta"] for c in cps if isinstance(c.get("manifest_delta"), dict)}

    store = ObjectStore(objects)

    def get_json(h: str) -> Any:  # a digest that is no sha256 (a forged record): ValueError, refused below
        return inline[h] if h in inline else read_json_object(store.path(h))

    steps: dict[str, dict[str, Any]] = {}
    try:
        # each step's manifest resolved from the previous one's (one link each, not its whole chain)
        resolved = load_manifests(get_json, [c["manifest"] for c in cps if c.get("manifest")]) if step_files else {}
        for c in cps:
            if c.get("result_error"):  # its result could not be kept: it runs again
                continue
            steps[c["path"]] = {"name": c["name"], "node": c["node_id"], "result": c.get("result"),
                                "result_inline": c.get("result_inline"), "result_preview": c.get("result_preview")}
            if step_files and c.get("manifest"):
                steps[c["path"]]["files"] = resolved[c["manifest"]]
                if c.get("partial"):  # a branch's record of it is partial too
                    steps[c["path"]]["partial"] = True
    except (OSError, ValueError, KeyError):
        raise ApiError("no_checkpoint", "the checkpoint files of this session are gone") from None
    seed: dict[str, Any] = {"steps": steps, "manifest": None, **extra}
    if cps:
        try:
            files, chain, depth = load_manifest(get_json, cps[-1]["manifest"])
        except (OSError, ValueError, KeyError):
            raise ApiError("no_checkpoint", "the checkpoint files of this session are gone") from None
        seed.update(manifest=cps[-1]["manifest"], files=files, depth=depth,
                    chain=[h for h in chain if h not in inline])
        if cps[-1].get("partial"):  # its scan stopped at a bound: the runner's restore removes nothing it lacks
            seed["partial"] = True
        _check_objects(steps, files, objects, cps[-1])
    return seed


def _check_objects(steps: dict[str, dict[str, Any]], files: dict[str, list[Any]], objects: Path,
                   last: dict[str, Any]) -> None:
    """Every result object of ``steps`` exists and (up to :data:`VERIFY_BYTES`) matches its sha256; every
    file object of the work directory's manifest exists (hashing those is the runner's, as it restores)."""
    budget, store = VERIFY_BYTES, ObjectStore(objects)
    for st in steps.values():
        digest = st.get("result")
        if not digest:
            continue
        try:
            path = store.path(digest)
        except ValueError:  # not a sha256: a forged record
            raise ApiError("no_checkpoint", f"the checkpoint of step {st['name']!r} ({st['node']}) names a result "
                           f"that is not an object ({str(digest)[:80]!r})", {"node": st["node"]}) from None
        try:
            size = path.stat().st_size
            damaged = False
            if size <= budget:
                budget -= size
                with open_regular(path) as f:  # a regular file, not through a symlink, never blocking
                    damaged = hashlib.file_digest(f, "sha256").hexdigest() != digest
        except OSError as exc:
            raise ApiError("no_checkpoint", f"the checkpoint of step {st['name']!r} ({st['node']}) cannot be used: "
                           f"its result object {digest[:12]} is gone ({exc.strerror or exc})",
                           {"node": st["node"], "step": st["name"]}) from None
        if damaged:
            raise ApiError("no_checkpoint", f"the checkpoint of step {st['name']!r} ({st['node']}) cannot be used: "
                           f"its result object {digest[:12]} is damaged (its content does not match its sha256)",
                           {"node": st["node"], "step": st["name"]})
    for rel, entry in files.items():
        digest = str(entry[0])
        if not store.complete(digest):  # stored whole, or its chunk index and every chunk
            raise ApiError("no_checkpoint", f"the checkpoint of step {last['name']!r} ({last['node_id']}) cannot be "
                           f"used: the object of its file {rel!r} ({digest[:12]}) is gone",
                           {"node": last["node_id"], "step": last["name"], "file": rel})


def _write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to a file made anew at ``path`` (refused if anything, a symlink included, is there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)


def write_seed(session_dir: Path, seed: dict[str, Any], name: str = SEED_FILE) -> None:
    """Write the seed in ``session_dir`` (``name``: a replay's is ``replay.json``). The directory is the session's
    runner's to write (the workflow's code): the temporary file is made anew (``O_EXCL``, ``O_NOFOLLOW``), never opened
    through what is at its name (a symlink planted there had the daemon overwrite any file of the user with the seed).
    A write that fails (a full disk) is ``io_error``, the temporary file removed."""
    tmp = session_dir / (name + ".tmp")
    try:
        session_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        _write_new(tmp, orjson.dumps(seed))
        os.replace(tmp, session_dir / name)
    except OSError as exc:  # a full disk: said as such, not as an internal error
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ApiError("io_error", f"could not write {name} in {session_dir}: {exc.strerror or exc}",
                       {"path": str(session_dir), "errno": exc.errno}) from None


def _merged_limits(row: dict[str, Any], override: Any, created: dict[str, Any] | None = None) -> Limits:
    """A session's stored limits with a request's ``override`` checked over them. ``created``: the session's
    ``session.created`` payload, which says where it runs (a Ray session's CPUs are its node's, up to the cluster
    bound); None: not read yet, checked with the cluster bound (then again with :func:`_placed`)."""
    if override is None:
        return Limits.from_dict(row["limits"])
    if not isinstance(override, dict):
        raise ApiError("bad_request", "field 'limits' must be an object")
    base = {k: v for k, v in (row["limits"] or {}).items() if v is not None}
    return _limits({"limits": {**base, **override}}, cluster=created is None or bool(created.get("placement")))


def _placed(limits: Limits, created: dict[str, Any]) -> Limits:
    """``limits`` checked again now that the session's ``session.created`` says where it runs: a session of this
    machine may not ask for more CPUs than it has (a resume checks its limits before its record is read)."""
    if created.get("placement"):
        return limits
    return _limits({"limits": limits.to_dict()})


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
            seed = _seed(cps, session_dir / OBJECTS_DIR, mode="resume", node_base=max_node_number(store, sid),
                         first_seq=int(row["runner_seq"]) + 1,
                         spent=float(row.get("cost") or 0.0),  # a budget is the session's whole spend, as ingest counts
                         recorded=recorded_files(store, sid))  # the restore records what it changes against this
            interrupted = [st["node_id"] for st in store.steps(sid) if st["status"] in ("running", "paused")]
            created = store.events(sid, kinds=["session.created"], limit=1)
            return cps, seed, interrupted, created[0]["payload"] if created else {}

        try:
            cps, seed, interrupted, c = yield Read(prepare, "resume seed")
        finally:
            sup.preparing.discard(req_id)
        if store.session(sid) is None:  # deleted (labd rm, retention) while its record was read
            raise ApiError("not_found", f"no session {sid!r}: it was deleted while being resumed")
        if req.body.get("limits") is not None or budget is not None:
            limits = _placed(limits, c)
        if d.draining:
            raise ApiError("draining", "the daemon is stopping its sessions (serve --drain): no resume now")
        refuse_while_store_down(d)
        write_seed(session_dir, seed)
        why = f"resumed by client from {status}" + (f": {reason}" if reason else "") + \
            f" ({len(seed['steps'])} completed steps kept)"
        entry = sup.queue.entry(sid, row["workflow"], _run_params(d, row["params"], c.get("payload")), limits,
                                row["workdir"], 0, time.time(), extra=entry_extra(d, row["name"], c))

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
    steps and checkpoints vanish under the reads, which would otherwise answer ``no_such_node`` or
    ``no_checkpoint``, blaming the request for what the deletion did."""
    if store.session(sid) is None:
        return ApiError("not_found", f"session {sid} was deleted while it was read")
    return None


def _find_node(store: Any, sid: str, ref: str) -> dict[str, Any]:
    node = step_row(store, sid, ref)
    if node is None:
        named = [s for s in store.steps(sid) if s["name"] == ref and s["kind"] != "agent"]
        if not named:
            raise ApiError("no_such_node", f"session {sid} has no node {ref!r} (see labd dag {sid})",
                           {"node": ref})
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


def _link_objects(src: Path, dst: Path, digests: set[str]) -> None:
    """Make the parent's objects the branch's (hard links: objects are write-once and read-only); a file stored in
    chunks is its index and its chunks."""
    parent = ObjectStore(src)
    for digest in digests:
        try:
            parts = parent.parts(digest)
        except (ValueError, KeyError, TypeError):  # no sha256, or a chunk index naming anything else: forged
            raise ApiError("no_checkpoint", f"a checkpoint of session {src.parent.parent.name} names an object that "
                           f"is not one ({str(digest)[:80]!r}): its record was tampered with") from None
        for part in parts:
            a, b = src / part, dst / part
            if b.exists():
                continue
            b.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(a, b)
            except OSError:  # another file system, or links not allowed: a copy
                shutil.copyfile(a, b)


@register
class Branch(Request):
    """A new session (or ``count``) seeded from a session's record up to a node."""

    type = "session.branch"

    def execute(self) -> Any:
        d = self.daemon
        self.only("session", "from", "hypothesis", "instructions", "count", "params", "limits",
                  done="nothing was started")  # a misspelt `hypothesis` or `params` branched without it
        if d.draining:
            raise ApiError("draining", "the daemon is stopping its sessions (serve --drain): no new sessions")
        refuse_while_store_down(d)
        parent = resolve_ref(d.store, self.arg("session", str, check=lambda s: 0 < len(s) <= 200,
                                               hint="a session id or name"))
        ref = self.arg("from", str, check=lambda s: 0 < len(s) <= 200, hint="a node id or step name")
        hypothesis = self.arg("hypothesis", str, None, check=lambda s: len(s) <= _TEXT, hint="text")
        instructions = self.arg("instructions", str, None, check=lambda s: len(s) <= _TEXT, hint="text")
        count = self.arg("count", int, 1, check=lambda n: 1 <= n <= MAX_BRANCHES, hint=f"1-{MAX_BRANCHES}")
        overrides = self.arg("params", dict, {})
        psid = parent["id"]
        if parent["status"] in ("created", "queued"):
            raise ApiError("not_started", f"session {psid} has not run yet: nothing to branch from")
        store = d.store
        # the long reads (the parent's steps, every checkpoint, a manifest per reused step, the objects) on a worker
        # thread (daemon/reads.py): on the request loop, a branch of a long session stalled every other client
        try:
            node, all_cps = yield Read(lambda: (_find_node(store, psid, ref), checkpoints(store, psid)),
                                       "branch record")
        except ApiError as exc:
            raise _gone_meanwhile(store, psid) or exc from None
        if not all_cps:
            raise _gone_meanwhile(store, psid) or ApiError(
                "no_checkpoint", f"session {psid} recorded no checkpoints (it ran before durable steps, or no step "
                "completed)", {"node": node["node_id"]})
        cps = [c for c in all_cps if c["seq"] < node["start_seq"]]
        created = d.store.events(psid, kinds=["session.created"], limit=1)
        c = created[0]["payload"] if created else {}
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
            seed = _seed(cps, src, step_files=True, mode="branch", node_base=max_node_number(store, psid),
                         hypothesis=hypothesis, instructions=instructions)
            _branch_dirs(psid, src, seed, dirs)
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
        reply = {"sessions": made, "parent": psid, "node": node["node_id"], "reused": len(seed["steps"]),
                 "files": len(manifest) if seed["manifest"] else 0}
        d.defer(self.reply_to, lambda _seq, _payload: reply)  # once the last branch is committed
        for sid, session_dir in zip(sids, dirs, strict=True):
            name = f"{parent['name'][:150]}-branch-{sid[:6]}"
            workdir = session_dir / "work"
            payload: dict[str, Any] = {"workflow": parent["workflow"], "name": name, "params": params,
                                       "limits": limits.to_dict(), "workdir": str(workdir), "parent_id": psid,
                                       "origin": "branch", "branch_node": node["node_id"]}
            for key in ("payload", "sys_path", "agents", "tags", "policy", "placement"):
                if c.get(key):
                    payload[key] = c[key]
            sandbox = d.sandbox_spec(sid, network)
            payload["sandbox"] = {k: sandbox[k] for k in ("level", "mechanism", "reasons", "network")} | {
                "runner": d.runner_confinement}
            last = len(made) == count - 1
            d.post_event(sid, "session.created", payload, reply_to=self.reply_to if last else None)
            d.supervisor.submit(d.supervisor.queue.entry(
                sid, parent["workflow"], _run_params(d, params, c.get("payload")), limits, str(workdir), 0,
                time.time(), extra=entry_extra(d, name, payload)))
            made.append({"session": sid, "name": name})
        return DEFERRED


def _branch_dirs(psid: str, src: Path, seed: dict[str, Any], dirs: list[Path]) -> None:
    """Each new branch's session directory: the parent's objects it needs (linked) and its seed, written before its
    ``session.created`` (a restart that re-queues it finds it). On a worker (files only); a branch that could not be
    prepared leaves nothing, nor do the others."""
    digests = {s["result"] for s in seed["steps"].values() if s.get("result")}
    digests.update(seed.get("chain") or ())
    digests.update(v[0] for v in (seed.get("files") or {}).values())
    # the files of each reused step's own checkpoint too: a branch of this branch may restore any of them
    digests.update(v[0] for s in seed["steps"].values() for v in (s.get("files") or {}).values())
    try:
        for session_dir in dirs:
            try:
                _link_objects(src, session_dir / OBJECTS_DIR, digests)
            except OSError as exc:
                raise ApiError("no_checkpoint", f"the checkpoint files of session {psid} cannot be read: "
                               f"{exc}") from None
            write_seed(session_dir, seed)
    except ApiError:
        for session_dir in dirs:
            shutil.rmtree(session_dir, ignore_errors=True)
        raise


@register
class Checkpoints(Request):
    """The checkpoints a session recorded (what resume and branch can start from)."""

    type = "session.checkpoints"

    def execute(self) -> Any:
        row = resolve_session(self)
        return {"session": row["id"], "checkpoints": checkpoints(self.daemon.store, row["id"])}
