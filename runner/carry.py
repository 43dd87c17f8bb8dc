"""What a resumed, branched or replayed session takes to the Ray node it runs on: its seeds and checkpoint objects.

A local runner continues a session from ``<home>/sessions/<id>``: the daemon writes the seed there
(``durable.seed.json``: the steps to skip and the checkpoint to restore) beside the session's object store
(``checkpoints/objects``: shipped home by the runner that made them, :meth:`labd.runner.ship.Shipper.ship_objects`;
linked from the parent's for a branch). A runner on a Ray node has a session directory of its own there, so the Ray
driver reads those files (:func:`carried`, on the daemon's machine: not on the daemon's loop) and puts them in the
spec the session's actor is created with, and the actor writes them into the node's session directory before it
starts the runner (:func:`unpack`). Only the seeds and objects travel: the work directory is restored from them. A
replay's seed (``replay.json``, the record it serves) travels the same way: its path at home named nothing on another
node.

Only the objects the seed names travel (:func:`needed_objects`: the checkpoint restored, its manifest chain, the
results of the steps kept, and for a branch each kept step's files), not the whole store: a session checkpointed at
every step of a week has every version of its files at home, and a resume restores one of them. Before 2026-12-07
every object went, so the actor's creation arguments grew with the session's whole history.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import orjson

from labd.ipc.safe_files import open_beneath
from labd.runner.checkpoint import OBJECTS_DIR, ObjectStore
from labd.runner.checkpoint_store import total_size
from labd.runner.durable import SEED_FILE
from labd.runner.objects import CHUNK_BYTES, MAX_JSON_OBJECT

__all__ = ["carried", "needed_objects", "unpack", "REPLAY_FILE"]

#: a replay's seed (``labd replay``: the recorded responses it serves), beside the session's durable seed
REPLAY_FILE = "replay.json"


def needed_objects(seed: dict[str, Any]) -> set[str]:
    """The digests of the objects a runner continuing from ``seed`` (``durable.seed.json``) reads: each kept step's
    result, the restored manifest's chain, the restored work directory's files, and each kept step's own files (a
    branch records them as its checkpoints, which a branch of it may restore). What a branch links from its parent
    (:func:`labd.daemon.api.seed.branch_dirs`) and what a resume carries to a Ray node (:func:`carried`)."""
    kept = seed.get("steps")
    steps = [s for s in kept.values() if isinstance(s, dict)] if isinstance(kept, dict) else []
    digests = {str(s["result"]) for s in steps if s.get("result")}
    digests.update(str(h) for h in seed.get("chain") or ())
    digests.update(str(v[0]) for v in _entries(seed.get("files")))
    digests.update(str(v[0]) for s in steps for v in _entries(s.get("files")))
    return digests


def _entries(files: Any) -> Iterable[Any]:
    """A manifest's entries (``[digest, size, mode]``), skipping anything else."""
    return (v for v in files.values() if isinstance(v, (list, tuple)) and v) if isinstance(files, dict) else ()


def carried(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with ``carry``: ``{relative path: bytes}`` of the seeds under the session directory
    ``spec["carry_from"]`` names and the objects its durable seed needs (:func:`needed_objects`; absent:
    ``spec`` as it is). An object missing or unreadable at home is left out: the runner's restore reports the file
    damaged, as on a local resume. Files are opened without following a symlink, regular files only; an object is
    read up to its bound (a chunk's 1 MiB, else :data:`~labd.runner.objects.MAX_JSON_OBJECT`) and carried only if it
    holds its digest. The seed carried says what the session's objects at home hold (``objects_bytes``)."""
    src = spec.get("carry_from")
    if not src:
        return spec
    base = Path(src)
    files: dict[str, bytes] = {}
    for name in (SEED_FILE, REPLAY_FILE):
        data = _read(base, name)
        if data is not None:
            files[name] = data
    if SEED_FILE in files:
        seed = orjson.loads(files[SEED_FILE])  # written by the daemon a moment ago: bad JSON fails the launch
        root = base / OBJECTS_DIR
        store = ObjectStore(root)
        for digest in sorted(needed_objects(seed)):
            try:
                parts = store.parts(digest)
            except (OSError, ValueError, KeyError, TypeError):  # not a digest, an unreadable or forged index
                continue
            for part in parts:
                rel = f"{OBJECTS_DIR}/{part.as_posix()}"
                if rel in files:
                    continue
                index = part.name.endswith(".chunks")  # named by its file's digest, not its own: bounded only
                data = _read(base, rel, CHUNK_BYTES if len(parts) > 1 and not index else MAX_JSON_OBJECT,
                             None if index else part.name)
                if data is not None:
                    files[rel] = data
        # what the session's objects at home hold: the node's store has only what was carried, and the session's
        # cap on its objects (checkpoint_store.MAX_SESSION_BYTES) counts from the whole
        files[SEED_FILE] = orjson.dumps({**seed, "objects_bytes": total_size(root)})
    return {**{k: v for k, v in spec.items() if k != "carry_from"}, "carry": files}


def _read(base: Path, rel: str, limit: int | None = None, digest: str | None = None) -> bytes | None:
    """The bytes of regular file ``rel`` under ``base`` (no symlink followed), None if it is not one, is longer than
    ``limit`` or does not hold ``digest`` (an object swapped, or damaged, at home: the restore says so)."""
    try:
        with open_beneath(base, rel, links_ok=True) as f:  # objects are shared with branches by hard links
            data = f.read() if limit is None else f.read(limit + 1)
    except OSError:  # gone, or UnsafePath (a symlink, not a regular file)
        return None
    if limit is not None and len(data) > limit:
        return None
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        return None
    return data


def unpack(session_dir: Path, files: dict[str, bytes]) -> int:
    """Write ``files`` (from :func:`carried`) under ``session_dir``; objects read-only, one already there kept
    (objects never change). A path that is absolute or climbs out is refused (ValueError). Returns files written."""
    written = 0
    for rel, data in files.items():
        p = PurePosixPath(rel)
        if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts):
            raise ValueError(f"not a path inside the session directory: {rel!r}")
        dest = session_dir.joinpath(*p.parts)
        is_object = rel.startswith(f"{OBJECTS_DIR}/")
        if is_object and os.path.lexists(dest):
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".carry-{os.getpid()}-{dest.name}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o444 if is_object else 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, dest)
        written += 1
    return written
