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
objects into a branch's directory. A write that fails (a full disk) removes its temporary file and raises:
the caller must not record a checkpoint that lacks the file.

Since an object is named by its sha256, a reader checks what it reads: :func:`restore` hashes each object
while copying it and puts nothing in place unless every one matches (:class:`DamagedObject`), and
:meth:`ObjectStore.get_verified` does the same for a result.
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

__all__ = ["ObjectStore", "Snapshot", "restore", "walk_files", "load_manifest", "load_manifests", "manifest_object",
           "OBJECTS_DIR", "MAX_CHAIN", "DamagedObject"]

#: relative to the session directory (the directory that holds ``work``)
OBJECTS_DIR = "checkpoints/objects"
#: a manifest is stored as the changes since the previous one; every MAX_CHAIN-th is stored whole, so
#: reading one follows at most this many links (and a step that changed one file stores a few hundred bytes
#: of manifest, not the whole directory's listing)
MAX_CHAIN = 32


class DamagedObject(OSError):
    """A checkpoint object is missing, or its content does not match the sha256 it is named by."""

    def __init__(self, message: str, damaged: list[str] | None = None) -> None:
        super().__init__(message)
        self.damaged = damaged or []


def _copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` (created); returns (sha256 of what was copied, bytes). ``dst`` is removed when
    the copy fails, whatever the reason (ENOSPC, EIO...)."""
    h = hashlib.sha256()
    written = 0
    try:
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            for block in iter(lambda: fi.read(1 << 20), b""):
                h.update(block)
                fo.write(block)
                written += len(block)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    return h.hexdigest(), written


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


def load_manifests(get_json: Any, digests: list[str]) -> dict[str, dict[str, list[Any]]]:
    """Resolve several manifests (a session's checkpoints, in record order): digest -> manifest. Each is resolved
    from the nearest one of its chain already resolved, so a checkpoint stored as the changes from the previous one
    costs those changes (and a copy), not a walk of its whole chain. The manifests returned may be shared: do not
    change them."""
    done: dict[str, dict[str, list[Any]]] = {}
    for digest in digests:
        if digest in done:
            continue
        chain: list[Any] = []
        cur = digest
        start: dict[str, list[Any]] | None = None
        while True:
            obj = get_json(cur)
            chain.append(obj)
            if "files" in obj or len(chain) > MAX_CHAIN + 1:
                start = dict(obj.get("files") or {})
                chain.pop()
                break
            cur = obj["base"]
            if cur in done:
                start = dict(done[cur])
                break
        for obj in reversed(chain):
            for rel in obj.get("del") or ():
                start.pop(rel, None)
            start.update(obj.get("set") or {})
        done[digest] = start
    return done


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
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._known.add(digest)

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; returns its sha256. Raises (leaving no temporary file) when the write fails."""
        digest = hashlib.sha256(data).hexdigest()
        if not self.has(digest):
            tmp = self._tmp()
            try:
                tmp.write_bytes(data)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._commit(tmp, digest)
        return digest

    def put_file(self, src: Path, expected: str) -> tuple[str, int]:
        """Copy ``src`` in (unless an object ``expected`` exists); returns (its real sha256, bytes written).
        Raises (leaving no temporary file) when the copy fails."""
        if self.has(expected):
            return expected, 0
        tmp = self._tmp()
        digest, written = _copy_hashed(src, tmp)
        if self.has(digest):  # rewritten since the scan, into something already stored
            tmp.unlink()
            return digest, 0
        self._commit(tmp, digest)
        return digest, written

    def get_bytes(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def get_verified(self, digest: str) -> bytes:
        """The content of object ``digest``; raises :class:`DamagedObject` if it is gone or does not match."""
        try:
            data = self.get_bytes(digest)
        except FileNotFoundError:
            raise DamagedObject(f"checkpoint object {digest[:12]} is missing", [digest]) from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise DamagedObject(f"checkpoint object {digest[:12]} is damaged (its content does not match its "
                                "sha256)", [digest])
        return data

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
    what differs (by size and content hash), leave identical files alone. Returns counts.

    Every object to write back is first copied into a staging directory (a dot directory of ``root``: not
    tracked) and checked against its sha256 while copied. ``root`` is changed only once all of them are there
    and intact; otherwise (a damaged or missing object: :class:`DamagedObject`; a full disk: the OSError) it is
    left as it was, and nothing of the staging directory stays."""
    root.mkdir(parents=True, exist_ok=True)
    extra: list[str] = []  # tracked files the manifest does not hold
    differ: list[str] = []  # held, with other content: written back
    kept: dict[str, int | None] = {}  # identical: rel -> the mode to set, or None
    for rel, st in list(walk_files(root)):
        want = manifest.get(rel)
        if want is None:
            extra.append(rel)
        elif want[1] == st.st_size and sha256_file(root / rel) == want[0]:
            kept[rel] = int(want[2]) if stat.S_IMODE(st.st_mode) != int(want[2]) else None
        else:
            differ.append(rel)
    todo = [rel for rel in manifest if rel not in kept]
    staging = root / f".labd-restore-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        staged = _stage(staging, todo, manifest, objects)
        for rel in extra + differ:
            os.unlink(root / rel)
        for rel, mode in kept.items():
            if mode is not None:
                os.chmod(root / rel, mode)
        for rel in todo:
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink() or dest.exists():  # e.g. a directory or link where a file belongs
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                else:
                    dest.unlink()
            os.chmod(staged[rel], int(manifest[rel][2]))
            os.replace(staged[rel], dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"removed": len(extra), "written": len(todo), "kept": len(kept)}


def _stage(staging: Path, todo: list[str], manifest: dict[str, list[Any]], objects: ObjectStore) -> dict[str, Path]:
    """Copy the objects of ``todo`` into ``staging``, each checked against its sha256; raises
    :class:`DamagedObject` naming every file whose object is missing or damaged."""
    staged: dict[str, Path] = {}
    damaged: list[str] = []
    if todo:
        staging.mkdir(mode=0o700)
    for i, rel in enumerate(todo):
        digest = str(manifest[rel][0])
        tmp = staging / str(i)
        try:
            got, _ = _copy_hashed(objects.path(digest), tmp)
        except FileNotFoundError:
            if not objects.path(digest).exists():
                damaged.append(f"{rel} (object {digest[:12]} missing)")
                continue
            raise
        if got != digest:
            tmp.unlink()
            damaged.append(f"{rel} (object {digest[:12]} does not match its sha256)")
            continue
        staged[rel] = tmp
    if damaged:
        more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        raise DamagedObject(f"the checkpoint is damaged: {', '.join(damaged[:5])}{more}; the work directory was "
                            "left as it was", damaged)
    return staged
