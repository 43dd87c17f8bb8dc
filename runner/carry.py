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
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from labd.runner.checkpoint import OBJECTS_DIR
from labd.runner.durable import SEED_FILE

__all__ = ["carried", "unpack", "REPLAY_FILE"]

#: a replay's seed (``labd replay``: the recorded responses it serves), beside the session's durable seed
REPLAY_FILE = "replay.json"


def carried(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with ``carry``: ``{relative path: bytes}`` of the seed and every object under the session directory
    ``spec["carry_from"]`` names (absent: ``spec`` as it is). Temporary and partial files are left out."""
    src = spec.get("carry_from")
    if not src:
        return spec
    base = Path(src)
    files: dict[str, bytes] = {}
    for name in (SEED_FILE, REPLAY_FILE):
        seed = base / name
        if seed.is_file():
            files[name] = seed.read_bytes()
    objects = base / OBJECTS_DIR
    if objects.is_dir():
        for sub in sorted(objects.iterdir()):
            if not sub.is_dir() or sub.is_symlink():
                continue
            for f in sorted(sub.iterdir()):
                if f.is_file() and not f.is_symlink() and not f.name.startswith(".") and ".labd-part" not in f.name:
                    files[f"{OBJECTS_DIR}/{sub.name}/{f.name}"] = f.read_bytes()
    return {**{k: v for k, v in spec.items() if k != "carry_from"}, "carry": files}


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
