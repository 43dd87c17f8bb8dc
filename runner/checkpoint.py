"""Work-directory snapshots for durable steps: content-addressed objects and per-checkpoint manifests.

A checkpoint's manifest maps each tracked file of the work directory to ``[sha256, size, mode]``. File
contents live once in the session's object directory (``<session dir>/checkpoints/objects/ab/<sha256>``):
a file unchanged across 50 steps is stored once, and a checkpoint of a directory where one file changed
copies only that file. Hashes come from the :class:`~labd.runner.files.FileTracker`, which already
hashes exactly what changed (by size and mtime) after every step, so a checkpoint never reads an
unchanged file. A manifest is itself an object (JSON), so an unchanged directory costs one lookup.

Objects are written to a temporary name, verified against their digest while copied (a file rewritten
between the scan and the copy is stored under what it really holds), made read-only, then renamed: an
object is never half-written and never modified, which lets the daemon hard-link a parent session's
objects into a branch's directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from labd.runner.files import sha256_file, walk_files

__all__ = ["ObjectStore", "Snapshot", "restore", "walk_files", "load_manifest", "manifest_object", "OBJECTS_DIR",
           "MAX_CHAIN"]

#: relative to the session directory (the directory that holds ``work``)
OBJECTS_DIR = "checkpoints/objects"
#: a manifest is stored as the changes since the previous one; every MAX_CHAIN-th is stored whole, so
#: reading one follows at most this many links (and a step that changed one file stores a few hundred bytes
#: of manifest, not the whole directory's listing)
MAX_CHAIN = 32


def manifest_object(manifest: dict[str, list[Any]], base: tuple[str, dict[str, list[Any]], int] | None) -> Any:
    """The object to store for ``manifest``: whole, or the changes from ``base`` (digest, manifest, chain length)."""
    if base is None or base[2] >= MAX_CHAIN:
        return {"files": manifest}
    digest, old, _ = base
    return {"base": digest, "set": {k: v for k, v in manifest.items() if old.get(k) != v},
            "del": sorted(set(old) - set(manifest))}


def load_manifest(get_json: Any, digest: str) -> tuple[dict[str, list[Any]], list[str], int]:
    """Resolve a manifest object (following its chain of changes); returns (manifest, every object digest of
    the chain, chain length). ``get_json(digest)`` reads one object."""
    chain: list[Any] = []
    digests: list[str] = []
    while True:
        obj = get_json(digest)
        chain.append(obj)
        digests.append(digest)
        if "files" in obj or len(chain) > MAX_CHAIN + 1:
            break
        digest = obj["base"]
    manifest: dict[str, list[Any]] = dict(chain[-1].get("files") or {})
    for obj in reversed(chain[:-1]):
        for rel in obj.get("del") or ():
            manifest.pop(rel, None)
        manifest.update(obj.get("set") or {})
    return manifest, digests, len(chain) - 1


class ObjectStore:
    """Content-addressed, write-once files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._known: set[str] = set()

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def has(self, digest: str) -> bool:
        if digest in self._known:
            return True
        if self.path(digest).exists():
            self._known.add(digest)
            return True
        return False

    def _tmp(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f".tmp-{os.getpid()}-{len(self._known)}-{os.urandom(4).hex()}"

    def _commit(self, tmp: Path, digest: str) -> None:
        dest = self.path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        self._known.add(digest)

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; returns its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        if not self.has(digest):
            tmp = self._tmp()
            tmp.write_bytes(data)
            self._commit(tmp, digest)
        return digest

    def put_file(self, src: Path, expected: str) -> tuple[str, int]:
        """Copy ``src`` in (unless an object ``expected`` exists); returns (its real sha256, bytes written)."""
        if self.has(expected):
            return expected, 0
        tmp = self._tmp()
        h = hashlib.sha256()
        written = 0
        with open(src, "rb") as fi, open(tmp, "wb") as fo:
            for block in iter(lambda: fi.read(1 << 20), b""):
                h.update(block)
                fo.write(block)
                written += len(block)
        digest = h.hexdigest()
        if self.has(digest):  # rewritten since the scan, into something already stored
            tmp.unlink()
            return digest, 0
        self._commit(tmp, digest)
        return digest, written

    def get_bytes(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def put_json(self, value: Any) -> str:
        return self.put_bytes(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))

    def get_json(self, digest: str) -> Any:
        return orjson.loads(self.get_bytes(digest))


class Snapshot(NamedTuple):
    """A work directory as a checkpoint saw it: its manifest (relative path -> ``[sha256, size, mode]``) and the
    object store that holds every file the manifest names (so a reader gets exactly those bytes, whatever the
    work directory holds by then)."""

    files: dict[str, list[Any]]
    objects: ObjectStore


def restore(root: Path, manifest: dict[str, list[Any]], objects: ObjectStore) -> dict[str, int]:
    """Make the tracked files of ``root`` exactly ``manifest``: remove what it does not hold, write back
    what differs (by size and content hash), leave identical files alone. Returns counts."""
    root.mkdir(parents=True, exist_ok=True)
    removed = written = kept = 0
    for rel, st in list(walk_files(root)):
        want = manifest.get(rel)
        if want is None:
            os.unlink(root / rel)
            removed += 1
        elif want[1] == st.st_size and sha256_file(root / rel) == want[0]:
            kept += 1
            if stat.S_IMODE(st.st_mode) != int(want[2]):
                os.chmod(root / rel, int(want[2]))
        else:
            os.unlink(root / rel)  # written back below
    present = {rel for rel, _ in walk_files(root)}
    for rel, (digest, _size, mode) in manifest.items():
        if rel in present:
            continue
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():  # e.g. a directory or link where a file belongs
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            else:
                dest.unlink()
        tmp = dest.with_name(f".{dest.name}.labd-restore")
        shutil.copyfile(objects.path(digest), tmp)
        os.chmod(tmp, int(mode))
        os.replace(tmp, dest)
        written += 1
    return {"removed": removed, "written": written, "kept": kept}


