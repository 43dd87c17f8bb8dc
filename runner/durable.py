"""Durable steps: a checkpoint at every completed step, and completed steps skipped on re-execution.

The DBOS/Temporal approach. A resumed (or branched) session runs its workflow function again from the top.
Each step has a *position*: its parent's position and its ordinal among the steps opened in that parent
(``"1"``, ``"1/0"``...). When the record (the seed the daemon hands over, built from ``step.checkpoint``
events) holds a completed step at that position, the step is not executed: its body is skipped and
``node.result`` is what the recorded run set it to. A step asked for by another name than the record
holds at its position is a divergence: :class:`Divergence` is raised (a ``step.diverged`` event), and the
session fails instead of guessing.

At every completed step the runner records a checkpoint (``step.checkpoint``): the position, the
pickled ``node.result`` (an object), the agents' last LLM request (each holds the agent's whole message
history, in blobs), and the manifest of the work directory (see :mod:`labd.runner.checkpoint`). A checkpoint
that cannot store every file (a full disk) is not recorded: the step ends failed (:class:`CheckpointFailed`),
so a resume runs it again instead of restoring a work directory without the file. A recorded result that no
longer loads (its object gone or damaged) makes its step run again, like a result that could not be pickled.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import orjson

from labd.runner import checkpoint_store as ckpt
from labd.runner.checkpoint import (
    OBJECTS_DIR,
    ObjectStore,
    Snapshot,
    load_manifest,
    manifest_object,
    restore,
)
from labd.runner.checkpoint_store import SessionBudget, Stored, store_files
from labd.runner.context import MAX_STEP_ERROR, clip
from labd.runner.names import display, named
from labd.runner.skipbody import SkipBody, skip_with_body
from labd.runner.withhold import head_cut

__all__ = ["Durable", "Divergence", "CheckpointFailed", "SkipBody", "skip_with_body", "SEED_FILE", "read_seed"]

#: the seed the daemon writes into the session directory before a resume or branch launches a runner
SEED_FILE = "durable.seed.json"


def read_seed(session_dir: Path) -> dict[str, Any]:
    """The record the daemon wrote for this runner (a resume or a branch)."""
    return dict(orjson.loads((session_dir / SEED_FILE).read_bytes()))


#: step results and manifest changes up to this size travel in the step.checkpoint event, not as objects
INLINE_BYTES = 8192
#: a step.checkpoint names at most this many of the files it left out over a cap (``left_out``; ``left_out_more``)
MAX_LEFT_OUT = 20


class Divergence(BaseException):  # noqa: N818 - a BaseException, like Cancelled: `except Exception` must not hide it
    """The re-executed workflow asked for another step than the record holds at that position."""


class CheckpointFailed(BaseException):  # noqa: N818 - like Divergence: the workflow must not go on unrecorded
    """A completed step's checkpoint could not be stored (its step is recorded failed, not checkpointed)."""


class Durable:
    """Positions, the recorded steps to skip, and checkpoints, for one runner."""

    def __init__(self, emit: Callable[..., int], session_dir: Path, workdir: Path, files: Any,
                 seed: dict[str, Any] | None = None, *, list_objects: bool = False) -> None:
        """``list_objects``: note every object written (``objects.added``), from the first (a restore's own
        manifest is the base later ones are stored against): a remote runner ships them home."""
        self._emit = emit
        self.workdir = workdir
        self.files = files
        self.objects = ObjectStore(session_dir / OBJECTS_DIR)
        self.objects.sweep()  # a runner killed while storing a file left its temporary file behind
        if list_objects:
            self.objects.added = []
        seed = seed or {}
        #: what this session's checkpoints may still add to its objects (checkpoint_store.MAX_SESSION_BYTES)
        self.budget = SessionBudget(self.objects.root, floor=int(seed.get("objects_bytes") or 0))
        self.mode: str | None = seed.get("mode")  # resume | branch | None (a first run)
        self.record: dict[str, dict[str, Any]] = dict(seed.get("steps") or {})
        self.manifest: str | None = seed.get("manifest")
        self.seed_files: dict[str, list[Any]] | None = seed.get("files")
        self.seed_depth = int(seed.get("depth") or 0)
        #: the checkpoint to restore is partial (its scan stopped at a bound): its restore removes nothing
        self.seed_partial = bool(seed.get("partial"))
        #: the work directory as the session's record has it (manifest key -> sha256): what a restore is recorded
        #: against; a branch's record starts empty; None (a seed from before it was sent): the restore is not recorded
        self.record_files: dict[str, str] | None = seed.get("recorded")
        if self.record_files is None and self.mode == "branch":
            self.record_files = {}
        #: USD the session spent before this runner (a resume): its budget counts the whole session
        self.spent = float(seed.get("spent") or 0.0)
        self.node_base = int(seed.get("node_base") or 0)
        self.hypothesis: str | None = seed.get("hypothesis")
        self.instructions: str | None = seed.get("instructions")
        self._ordinals: dict[str, int] = {}
        self._paths: dict[str, str] = {}
        self._started: dict[str, float] = {}  # node id -> when its step was bound (a failed checkpoint's duration)
        self._lock = threading.Lock()
        #: agent name -> src_seq of its latest llm.request (that request holds its whole history)
        self.agents: dict[str, int] = {}
        self.live = not self.record  # True once a step ran that the record did not hold
        #: the last manifest stored (digest, manifest, chain length): the next is stored as changes from it
        self._base: tuple[str, dict[str, list[Any]], int] | None = None
        self._ck_lock = threading.Lock()
        self.enabled = True  # scripts/bench_flows.py turns checkpoints off to measure their cost
        #: called with each step's checkpoint (a remote runner ships the files that changed: runner/ship.py)
        self.after_checkpoint: Callable[[Snapshot], object] | None = None
        #: called before each ``step.checkpoint`` is emitted (a remote runner ships the checkpoint's new objects
        #: first, so a daemon that has the event has what a resume or branch from it needs: runner/ship.py)
        self.before_checkpoint: Callable[[], object] | None = None
        self._cap_warned: set[str] = set()  # the warnings given that checkpoints leave files out (see _left_out)

    # ---- positions and the record -----------------------------------------------------------------
    def position(self, parent_node: str | None) -> str:
        """The next position under ``parent_node`` (deterministic if the workflow is, outside its steps)."""
        if parent_node is not None and parent_node not in self._paths:
            # an agent turn (a step opened in a tool call): positions count under the step the turn runs in
            parent_node = self.files.step_of(parent_node)
        with self._lock:
            parent = self._paths.get(parent_node, "") if parent_node else ""
            n = self._ordinals.get(parent, 0)
            self._ordinals[parent] = n + 1
        return f"{parent}/{n}" if parent else str(n)

    def bind(self, node_id: str, path: str) -> None:
        with self._lock:
            self._paths[node_id] = path
            self._started[node_id] = time.monotonic()

    def recorded(self, path: str, name: str) -> dict[str, Any] | None:
        """The completed step the record holds at ``path``, or None (run it); raises :class:`Divergence`."""
        rec = self.record.get(path)
        if rec is None:
            self.live = True
            return None
        if rec.get("name") != name:
            self._emit("step.diverged", {"path": path, "expected": str(rec.get("name")), "got": name,
                                         "recorded_node": str(rec.get("node"))})
            raise Divergence(f"the workflow diverged from its record at step position {path}: it asks for step "
                             f"{name!r} where the record has {rec.get('name')!r} (the code outside steps must be "
                             "deterministic; see docs/design.md, 'Durable steps')")
        try:
            value = self._load_result(rec)
        except Exception as exc:  # noqa: BLE001 - gone, damaged, or no longer unpicklable: the step runs again
            self._emit("log", {"level": "warning", "logger": "labd.runner.durable",
                               "event": f"the recorded result of step {name!r} (position {path}) cannot be "
                                        f"loaded ({type(exc).__name__}: {exc}); the step runs again"})
            self.live = True
            return None
        return {**rec, "_value": value}

    def result_of(self, rec: dict[str, Any]) -> Any:
        """The result of a recorded step (loaded by :meth:`recorded`, which checked it)."""
        return rec["_value"] if "_value" in rec else self._load_result(rec)

    def _load_result(self, rec: dict[str, Any]) -> Any:
        inline = rec.get("result_inline")
        if inline:
            return pickle.loads(base64.b64decode(inline))  # noqa: S301 - written by this session's own runner
        digest = rec.get("result")
        if not digest:
            return None
        # checked against its sha256 (DamagedObject otherwise): never unpickle other bytes than were stored
        return pickle.loads(self.objects.get_verified(digest))  # noqa: S301 - this session's own runner's

    def note_request(self, agent: str, src_seq: int) -> None:
        self.agents[agent] = src_seq

    def extra_prompt(self) -> str | None:
        """What a branch adds to the system prompt of agents created once it went live."""
        if self.mode != "branch" or not self.live:
            return None
        parts = []
        if self.hypothesis:
            parts.append(f"Hypothesis to test: {self.hypothesis}")
        if self.instructions:
            parts.append(f"Instructions: {self.instructions}")
        return "\n".join(parts) or None

    # ---- checkpoints ------------------------------------------------------------------------------
    def restore_workdir(self) -> None:
        """Bring the work directory to the record's last checkpoint (a resume or branch, before the workflow)."""
        if not self.manifest:
            return
        start = time.monotonic()
        # the daemon resolved it (small manifest changes travel inline in the events, not as objects)
        manifest = self.seed_files if self.seed_files is not None else \
            load_manifest(self.objects.get_json, self.manifest)[0]
        self._base = (self.manifest, manifest, self.seed_depth)
        if self.mode == "branch":  # its own record must stand alone: the manifest whole, in its own store
            self._base = (self.objects.put_json(manifest_object(manifest, None)), manifest, 0)
        counts = restore(self.workdir, manifest, self.objects, remove_extra=not self.seed_partial)
        if self.seed_partial:
            self.files.truncation_warned = True  # said here, once: the scans of this runner do not say it again
            self._emit("log", {"level": "warning", "logger": "labd.runner.durable",
                               "event": f"the checkpoint restored ({len(manifest)} files) is partial: the work "
                                        "directory held more files than a scan reaches, so its files were written "
                                        "back and nothing it does not hold was removed (a new work directory, as "
                                        "a branch's, starts without them)"})
        # the tracker knows them (the next scan reports changes, not 50 creations), and the record says what the
        # restore made of the directory it had recorded (a branch's: nothing yet); a file a partial checkpoint left
        # out (over a cap) that the restore left in place is not reported deleted
        recorded = self.record_files
        if self.seed_partial and recorded:
            recorded = {k: v for k, v in recorded.items()
                        if k in manifest or (rel := named(k)) is None or not os.path.lexists(self.workdir / rel)}
        self.files.adopt(manifest, recorded)
        self._emit("checkpoint.restored", {"manifest": self.manifest, "files": len(manifest),
                                           "duration": time.monotonic() - start, **counts})

    def reused_checkpoint(self, node_id: str, path: str, rec: dict[str, Any]) -> None:
        """A branch's record of a step it reused: the parent's result, the restored work directory; so a
        resume of the branch skips it as well."""
        with self._ck_lock:
            if rec.get("files") is not None:  # the work directory as the parent's checkpoint of this step had it
                manifest = rec["files"]
                digest = self.objects.put_json(manifest_object(manifest, None))  # in our own store, whole
            else:  # a seed written before step files were sent: the restored directory, as it always was
                if self._base is None:
                    self._base = (self.objects.put_json(manifest_object({}, None)), {}, 0)
                digest, manifest, _ = self._base
        payload: dict[str, Any] = {"path": path, "name": str(rec.get("name")), "manifest": digest,
                                   "files": len(manifest), "bytes": sum(int(v[1]) for v in manifest.values()),
                                   "new_objects": 0, "new_bytes": 0, "reused": True}
        if rec.get("partial"):
            payload["partial"] = True
        for key in ("result", "result_inline", "result_preview"):  # the preview: what `labd checkpoints` shows
            if rec.get(key):
                payload[key] = rec[key]
        if rec.get("node") and rec["node"] != node_id:  # a planned step keeps the id its plan gave it here
            payload["origin_node"] = rec["node"]  # the parent's node: where a replay finds what the step recorded
        if self.before_checkpoint is not None:
            self.before_checkpoint()
        self._emit("step.checkpoint", payload, node_id)

    def checkpoint(self, node_id: str, path: str, name: str, result: Any) -> None:
        """Record a completed step: its result, the agents' histories, the work directory's manifest."""
        if not self.enabled:
            return
        start = time.monotonic()
        try:
            payload, manifest = self._checkpoint(path, name, result)
        except OSError as exc:
            self._failed(node_id, name, exc)
        with self._lock:
            self._started.pop(node_id, None)
        payload["duration"] = time.monotonic() - start
        if self.before_checkpoint is not None:
            self.before_checkpoint()
        self._emit("step.checkpoint", payload, node_id)
        if self.after_checkpoint is not None:
            self.after_checkpoint(Snapshot(manifest, self.objects))

    def _failed(self, node_id: str, name: str, exc: OSError) -> NoReturn:
        """A checkpoint that could not be stored: the step ends failed (its ``step.finished`` is emitted here,
        as the step's own is not once this raises), and :class:`CheckpointFailed` ends the workflow."""
        with self._lock:
            started = self._started.pop(node_id, None)
        error = f"checkpoint failed: {type(exc).__name__}: {exc}"
        self._emit("step.finished", {"name": name, "status": "failed", "error": clip(error, MAX_STEP_ERROR),
                                     "duration": time.monotonic() - started if started is not None else 0.0},
                   node_id)
        raise CheckpointFailed(f"the checkpoint of step {name!r} could not be stored ({type(exc).__name__}: "
                               f"{exc}); the step is recorded failed, not completed: a resume runs it again") from exc

    def _checkpoint(self, path: str, name: str, result: Any) -> tuple[dict[str, Any], dict[str, list[Any]]]:
        """Store what a checkpoint needs (objects); returns its ``step.checkpoint`` payload and manifest. Raises
        OSError when something could not be stored (then the next checkpoint's base is still the last one
        recorded: nothing of this one is referred to)."""
        stored, partial = self._manifest()
        manifest = stored.manifest
        payload: dict[str, Any] = {"path": path, "name": name, "files": len(manifest), "bytes": stored.total,
                                   "new_objects": stored.new_objects, "new_bytes": stored.new_bytes}
        if partial:  # the scan stopped at a bound, or files over a cap were left out: a restore removes nothing
            payload["partial"] = True
        if stored.left_out:
            self._left_out(name, stored.left_out, payload)
        if result is not None:
            try:
                data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # noqa: BLE001 - an unpicklable result: the step is re-run on resume
                payload["result_error"] = clip(f"{type(exc).__name__}: {exc}", 500)
            else:
                if len(data) <= INLINE_BYTES:  # small: in the event (one file fewer to create per step)
                    payload["result_inline"] = base64.b64encode(data).decode()
                else:
                    payload["result"] = self.objects.put_bytes(data)  # an OSError: the checkpoint fails
                payload["result_preview"] = _preview(result)
        with self._ck_lock:
            base = self._base
            if base is not None and base[1] == manifest:
                payload["manifest"] = base[0]  # the work directory did not change: the same manifest
            else:
                obj = manifest_object(manifest, base)
                data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
                if "base" in obj and len(data) <= INLINE_BYTES:  # small changes: in the event, no file to create
                    payload["manifest"], payload["manifest_delta"] = hashlib.sha256(data).hexdigest(), obj
                else:
                    payload["manifest"] = self.objects.put_bytes(data)
                self._base = (payload["manifest"], manifest, base[2] + 1 if base is not None and "base" in obj else 0)
        if self.agents:
            payload["agents"] = dict(self.agents)
        return payload, manifest

    def snapshot(self) -> Snapshot:
        """The work directory as the file tracker last scanned it, its files stored as objects, without
        recording a checkpoint (what a remote runner ships once the workflow has ended)."""
        return Snapshot(self._manifest()[0].manifest, self.objects)

    def _manifest(self) -> tuple[Stored, bool]:
        """The manifest of the tracker's last scan (hashes it already computed: no file is read twice), each
        file's content stored as an object first (within the caps: :func:`~labd.runner.checkpoint_store.store_files`).
        Returns what was stored and whether the manifest is partial: the scan stopped at a bound, or files were
        left out over a cap, so it may lack files of the work directory."""
        with self.files.lock:
            seen = dict(self.files.seen)
            modes = dict(self.files.modes)
            partial = bool(getattr(self.files, "truncated", False))
        stored = store_files(self.objects, self.workdir, seen, modes, self.budget)
        return stored, partial or bool(stored.left_out)

    def _left_out(self, name: str, left_out: list[tuple[str, int, str]], payload: dict[str, Any]) -> None:
        """Name the files a checkpoint left out in its payload; warn the first time (per runner) files are left out
        for each kind of reason: a checkpoint's caps, the session's cap, a file changed since its scan."""
        payload["left_out"] = [{"path": display(rel), "size": size, "why": why}
                               for rel, size, why in left_out[:MAX_LEFT_OUT]]
        if len(left_out) > MAX_LEFT_OUT:
            payload["left_out_more"] = len(left_out) - MAX_LEFT_OUT
        for kind, whys in (("cap", ("file_cap", "checkpoint_cap")), ("session_cap", ("session_cap",)),
                           ("changed", ("changed", "unreadable"))):
            files = [(rel, size) for rel, size, why in left_out if why in whys]
            if not files or kind in self._cap_warned:
                continue
            self._cap_warned.add(kind)
            some = ", ".join(f"{display(rel)} ({size:,} bytes)" for rel, size in files[:3])
            more = f" and {len(files) - 3} more" if len(files) > 3 else ""
            reason = {
                "cap": f"a checkpoint stores no file that would add more than {ckpt.MAX_FILE_BYTES:,} bytes of new "
                       f"objects, and at most {ckpt.MAX_NEW_BYTES:,} bytes of new objects in all (apparent sizes, "
                       "sparse files' holes included; the chunks of a large file stored already add nothing)",
                "session_cap": f"the session's checkpoint objects reached {ckpt.MAX_SESSION_BYTES:,} bytes (apparent "
                               "sizes), so its checkpoints store no new file content from now on",
                "changed": "they changed (or could not be read) between the scan and their copy, and a checkpoint "
                           "stores a file only as its scan saw it",
            }[kind]
            self._emit("log", {"level": "warning", "logger": "labd.runner.durable",
                               "event": f"the checkpoint of step {name!r} left out {some}{more}: {reason}; so it is "
                                        "partial (its step.checkpoint event names what it left out); a resume from a "
                                        "partial checkpoint writes back what it holds and removes nothing, and a "
                                        "branch starts without the files it does not hold"})


def _preview(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails must not fail the step
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 500 else text[:head_cut(text, 497)] + "..."  # never a piece of a secret
