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

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import orjson

from labd.ipc.safe_files import open_beneath
from labd.runner.checkpoint import OBJECTS_DIR, ObjectStore
from labd.runner.durable import SEED_FILE

__all__ = ["carried", "needed_objects", "unpack", "REPLAY_FILE"]

#: a replay's seed (``labd replay``: the recorded responses it serves), beside the session's durable seed
REPLAY_FILE = "replay.json"


def needed_objects(seed: dict[str, Any]) -> set[str]:
    """The digests of the objects a runner continuing from ``seed`` (``durable.seed.json``) reads: each kept step's
    result, the restored manifest's chain, the restored work directory's files, and each kept step's own files (a
    branch records them as its checkpoints, which a branch of it may restore). What a branch links from its parent
    (:func:`labd.daemon.api.seed.branch_dirs`) and what a resume carries to a Ray node (:func:`carried`)."""
    steps = [s for s in (seed.get("steps") or {}).values() if isinstance(s, dict)]
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
    damaged, as on a local resume. Files are opened without following a symlink, regular files only."""
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
        store = ObjectStore(base / OBJECTS_DIR)
        for digest in sorted(needed_objects(seed)):
            try:
                parts = store.parts(digest)
            except (OSError, ValueError, KeyError, TypeError):  # not a digest, an unreadable or forged index
                continue
            for part in parts:
                rel = f"{OBJECTS_DIR}/{part.as_posix()}"
                if rel not in files and (data := _read(base, rel)) is not None:
                    files[rel] = data
    return {**{k: v for k, v in spec.items() if k != "carry_from"}, "carry": files}


def _read(base: Path, rel: str) -> bytes | None:
    """The bytes of regular file ``rel`` under ``base`` (no symlink followed), None if it is not one."""
    try:
        with open_beneath(base, rel, links_ok=True) as f:  # objects are shared with branches by hard links
            return f.read()
    except OSError:  # gone, or UnsafePath (a symlink, not a regular file)
        return None


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
