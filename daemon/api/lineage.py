"""Lineage requests: replay a recorded session, compare sessions side by side, show a session's family."""

from __future__ import annotations

import hashlib
import secrets
import shutil
from pathlib import Path
from typing import Any

from labd.daemon.api.base import ApiError, Request, register
from labd.daemon.api.seed import branch_dirs, build_seed, write_seed
from labd.daemon.api.sessions import resolve_ref, resolve_session, session_name
from labd.daemon.api.start import REPLAY_FILE, Start
from labd.daemon.reads import Read
from labd.ipc.events import TERMINAL_STATUSES
from labd.ipc.functions import FUNCTION_WORKFLOW
from labd.runner.checkpoint import OBJECTS_DIR
from labd.store.checkpoints import checkpoints
from labd.store.compare import compare
from labd.store.lineage import family, replay_seed

__all__ = ["Replay", "Compare", "Tree", "MAX_COMPARE"]

MAX_COMPARE = 10


def _suffix(key: str | None) -> str:
    """4 hex digits that tell replays of one session apart: derived from the idempotency key, else random."""
    return hashlib.sha256(key.encode()).hexdigest()[:4] if key is not None else secrets.token_hex(2)


def branch_seed(store: Any, row: dict[str, Any], created: dict[str, Any], objects: Path) -> dict[str, Any] | None:
    """The durable seed a replay of branch ``row`` runs with, the branch's own in effect: the steps it reused,
    from its own checkpoints of them (its objects in ``objects``), its node numbering, hypothesis and
    instructions, so the replay reuses what the branch reused and serves only what the branch ran. None for
    another session, or a branch recorded before ``session.created`` carried ``node_base`` (its replay runs the
    reused steps again, served from the parent's record, without the hypothesis)."""
    node_base = created.get("node_base")
    if row.get("origin") != "branch" or isinstance(node_base, bool) or not isinstance(node_base, int):
        return None
    cps = [c for c in checkpoints(store, row["id"]) if c.get("reused")]
    return build_seed(cps, objects, step_files=True, mode="branch", node_base=node_base,
                      hypothesis=created.get("hypothesis"), instructions=created.get("instructions"))


def _seed(store: Any, row: dict[str, Any], until: str | None,
          objects: Path) -> tuple[dict[str, Any], dict[str, Any], str | None, dict[str, Any] | None]:
    """(the session's ``session.created`` payload, its replay seed up to the end of node ``until``, that node's
    id, the durable seed of a branch's replay (:func:`branch_seed`)): read on a worker thread, from the store and
    the session's objects. ``until`` is a node id or, as for ``branch --from``, the name of a step (the completed
    one of that name; ``ambiguous`` if several completed)."""
    if until is not None:
        rows = store.steps(row["id"])
        nodes = [n["node_id"] for n in rows]
        if until not in nodes:
            named = [n for n in rows if n["name"] == until and n["kind"] != "agent"]
            done = [n for n in named if n["status"] == "completed"] or named
            if not done:
                raise ApiError("unknown_node", f"session {row['id']} has no node or step {until!r}",
                               {"nodes": nodes[:200]})
            if len(done) > 1:
                ids = [n["node_id"] for n in done]
                raise ApiError("ambiguous", f"{len(done)} steps of session {row['id']} are named {until!r} "
                               f"({', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}): give a node id",
                               {"node": until, "matches": ids[:50]})
            until = done[0]["node_id"]
    created = store.created(row["id"])
    durable = branch_seed(store, row, created, objects)
    return created, replay_seed(store, row, until, inherit=durable is None), until, durable


@register
class Replay(Start):
    """Start a new session that re-runs a finished session's workflow with the same params, every LLM response
    and approval answer served from the record (up to the end of node ``from``, then live). Replies like
    ``session.start``; the new session records ``parent_id``, ``origin: replay`` and ``branch_node``."""

    type = "session.replay"
    _seed: dict[str, Any] | None = None
    _durable: dict[str, Any] | None = None  # a branch's replay: the seed of the steps it reused (branch_seed)
    _objects: Path  # the replayed session's checkpoint objects

    def execute(self) -> Any:  # a generator: the seed is read on a worker (daemon/reads.py), then a start
        d = self.daemon
        self.only("session", "from", "name", "idempotency_key", done="nothing was started")  # `form` replayed all
        row = resolve_session(self)
        until = self.arg("from", str, None, check=lambda s: 0 < len(s) <= 64, hint="a node id of the session")
        if row["status"] not in TERMINAL_STATUSES:
            raise ApiError("not_finished", f"session {row['id']} is {row['status']}: only a finished session can be "
                           "replayed (wait for it, or stop it)", {"status": row["status"]})
        name = session_name(self)
        key = self.arg("idempotency_key", str, None)
        objects = self._objects = d.layout.sessions_dir / row["id"] / OBJECTS_DIR
        created, self._seed, until, self._durable = yield Read(lambda: _seed(d.store, row, until, objects),
                                                               "replay seed")
        body: dict[str, Any] = {
            "workflow": row["workflow"], "params": row["params"],
            # the original's limits; no process limit stays none (not the daemon's default, 256: it may have needed
            # more, with --procs none, or ran before the default)
            "limits": {**{k: v for k, v in row["limits"].items() if v is not None},
                       **({} if row["limits"].get("procs") is not None else {"procs": "none"})},
            # a default name's suffix comes from the key when there is one: the name is part of the request's
            # digest, and a retry with the same key must be the same request (not idempotency_conflict)
            "name": name or f"replay-{row['name'][:180]}-{_suffix(key)}",
            "tags": row.get("tags") or None, "agents": created.get("agents") or None,
            "pythonpath": created.get("sys_path") or [],
            "network": bool((created.get("sandbox") or {}).get("network", d.cfg.sandbox.network)),
            # part of the request digest: one idempotency key is one replay of one session from one node
            "replay_of": row["id"], "replay_from": until,
        }
        if row["workflow"] == FUNCTION_WORKFLOW:
            body["payload"] = created.get("payload")
            # the call's own params: the digest and size recorded beside them are the start's to add again
            body["params"] = {k: v for k, v in row["params"].items()
                              if k not in ("payload", "max_result", "sha256", "size")}
        if key is not None:
            body["idempotency_key"] = key
        self.body = {k: v for k, v in body.items() if v is not None}
        self.lineage = {"parent_id": row["id"], "origin": "replay", "branch_node": until}
        return (yield from super().execute())

    def prepare(self, sid: str) -> None:
        # beside the work directory (never in it: the agent's files), read by the runner before it confines itself.
        # A full disk is io_error and leaves no directory (it was an internal error, a traceback in the log and a
        # directory holding an empty replay.tmp)
        session_dir = self.daemon.layout.sessions_dir / sid
        try:
            if self._durable is not None:  # a branch's replay: the steps it reused, their objects linked
                branch_dirs(self._objects.parent.parent.name, self._objects, self._durable, [session_dir])
            write_seed(session_dir, self._seed or {}, REPLAY_FILE)  # read by execute before any prepare
        except ApiError:
            shutil.rmtree(session_dir, ignore_errors=True)
            raise


@register
class Compare(Request):
    """Sessions side by side: steps (matched by name), files (by hash, with diffs), totals, final results."""

    type = "sessions.compare"

    def execute(self) -> Any:  # a generator: the comparison is read on a worker (daemon/reads.py)
        refs = self.arg("sessions", list, check=lambda s: all(isinstance(x, str) for x in s),
                        hint="a list of session ids or names")
        if len(refs) < 2:
            raise ApiError("bad_request", "compare needs at least two sessions")
        if len(refs) > MAX_COMPARE:
            raise ApiError("bad_request", f"compare takes at most {MAX_COMPARE} sessions")
        store = self.daemon.store
        rows = [resolve_ref(store, r) for r in refs]
        seen: dict[str, str] = {}
        for ref, row in zip(refs, rows, strict=True):
            if row["id"] in seen:  # a comparison of a session with itself says nothing, and reads it twice
                raise ApiError("bad_request", f"{ref!r} and {seen[row['id']]!r} are the same session ({row['id']}): "
                               "compare different sessions", {"field": "sessions"})
            seen[row["id"]] = ref
        return (yield Read(lambda: compare(store, rows), "comparison"))


@register
class Tree(Request):
    """A session's family: its root ancestor and every descendant via ``parent_id``, as a tree."""

    type = "sessions.tree"

    def execute(self) -> Any:
        row = resolve_session(self)
        return family(self.daemon.store, row["id"])
