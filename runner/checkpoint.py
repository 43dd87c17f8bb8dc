"""Work-directory snapshots for durable steps: content-addressed objects and per-checkpoint manifests.

A checkpoint's manifest maps each tracked file of the work directory to ``[sha256, size, mode]``. File
contents live once in the session's object directory (``<session dir>/checkpoints/objects/ab/<sha256>``):
a file unchanged across 50 steps is stored once, and a checkpoint of a directory where one file changed
copies only that file. Hashes come from the :class:`~labd.runner.files.FileTracker`, which already
hashes exactly what changed (by size and mtime) after every step, so a checkpoint never reads an
unchanged file. A manifest is itself an object (JSON), so an unchanged directory costs one lookup.

The object store is :mod:`labd.runner.objects` (large files are stored there in 1 MiB chunks, so a growing file
costs a checkpoint its new tail). Objects are written to a temporary name, verified against their digest while
copied, made read-only, then renamed: an object is never half-written and never modified, which lets the daemon
hard-link a parent session's objects into a branch's directory. A file is read through
:class:`~labd.runner.workfs.WorkDir` (no symlink in any component, a regular file only) and must hold exactly the
digest its scan recorded: a file rewritten, replaced (a symlink swapped in) or gone since the scan is not stored
(:class:`SourceChanged`), never under a wrong digest.
A write that fails (a full disk) removes its temporary file and raises OSError: the caller must not record a
checkpoint that lacks the file.

Since an object is named by its sha256, a reader checks what it reads: :func:`restore` hashes each object
while copying it and puts nothing in place unless every one matches (:class:`DamagedObject`), and
:meth:`ObjectStore.get_verified` does the same for a result.

A checkpoint's new objects are capped (:func:`labd.runner.checkpoint_store.store_files`; an attack review filled a
disk with a ``truncate``d file): what does not fit is left out and the checkpoint is partial. 1 MiB of zeros is
written as a hole.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

from labd.runner.files import walk_files
from labd.runner.names import BadKey, display, key_path
from labd.runner.objects import DamagedObject, ObjectStore, SourceChanged, TooLarge, copy_stream
from labd.runner.workfs import UnsafePath, WorkDir, parts_of

__all__ = ["ObjectStore", "Snapshot", "restore", "walk_files", "load_manifest", "load_manifests", "manifest_object",
           "OBJECTS_DIR", "MAX_CHAIN", "DamagedObject", "TooLarge", "SourceChanged"]

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


class Snapshot(NamedTuple):
    """A work directory as a checkpoint saw it: its manifest (relative path -> ``[sha256, size, mode]``) and the
    object store that holds every file the manifest names (so a reader gets exactly those bytes, whatever the
    work directory holds by then)."""

    files: dict[str, list[Any]]
    objects: ObjectStore


def restore(root: Path, manifest: dict[str, list[Any]], objects: ObjectStore, remove_extra: bool = True
            ) -> dict[str, int]:
    """Make the tracked files of ``root`` exactly ``manifest``: remove what it does not hold, write back
    what differs (by size and content hash), leave identical files alone. Returns counts.

    ``remove_extra=False`` (a partial manifest: its scan stopped at a bound, or files over a cap were left out, so a
    file it lacks may well belong to the checkpoint): write back what the manifest holds and remove nothing else.

    Every object to write back is first copied into a staging directory (a dot directory of ``root``: not
    tracked) and checked against its sha256 while copied. ``root`` is changed only once all of them are there
    and intact; otherwise (a damaged or missing object: :class:`DamagedObject`; a full disk: the OSError) it is
    left as it was, and nothing of the staging directory stays.

    Nothing outside ``root`` is read, written, chmodded or removed, whatever symlinks the session's code planted
    (:class:`~labd.runner.workfs.WorkDir`: each path component is opened without following a symlink). A symlink
    (or any non-directory) where a directory of the manifest belongs is replaced by a real directory, and one
    where a file belongs by the file: the link itself goes, never its target.

    Manifest keys are :func:`labd.runner.names.manifest_key`s: a name that is not UTF-8 comes back byte for byte."""
    wanted: dict[str, list[Any]] = {}
    for key, entry in manifest.items():  # before anything is touched: a manifest path names a place inside root
        try:
            rel = key_path(key)
            parts_of(rel)
        except (BadKey, UnsafePath) as exc:
            raise DamagedObject(f"the checkpoint's manifest is damaged: {exc}; the work directory was left as it "
                                "was", [display(key)]) from None
        wanted[rel] = entry
    manifest = wanted
    root.mkdir(parents=True, exist_ok=True)
    extra: list[str] = []  # tracked files the manifest does not hold
    kept: dict[str, int | None] = {}  # identical: rel -> the mode to set, or None
    with WorkDir(root) as wd:
        for rel, st in list(wd.walk()):
            want = manifest.get(rel)
            if want is None:
                if remove_extra:
                    extra.append(rel)
            elif want[1] == st.st_size and _sha256_or_none(wd, rel) == want[0]:
                kept[rel] = int(want[2]) if stat.S_IMODE(st.st_mode) != int(want[2]) else None
        todo = [rel for rel in manifest if rel not in kept]  # missing, or other content: written back
        staging = f".labd-restore-{os.getpid()}-{os.urandom(4).hex()}"
        staging_fd = -1
        try:
            if todo:
                staging_fd = wd.make_private_dir(staging)
            staged = _stage(staging_fd, todo, manifest, objects)
            for rel in extra:
                wd.remove_file(rel)
            for rel, mode in kept.items():
                if mode is not None:
                    wd.chmod_file(rel, mode)
            for rel in todo:
                wd.place(rel, staging_fd, staged[rel])
        finally:
            if staging_fd >= 0:
                os.close(staging_fd)
                wd.remove_tree(staging)
    return {"removed": len(extra), "written": len(todo), "kept": len(kept)}


def _sha256_or_none(wd: WorkDir, rel: str) -> str | None:
    """The file's sha256; None when it cannot be read (then it is written back)."""
    try:
        return wd.sha256(rel)
    except OSError:
        return None


def _stage(staging_fd: int, todo: list[str], manifest: dict[str, list[Any]], objects: ObjectStore) -> dict[str, str]:
    """Copy the objects of ``todo`` into the staging directory ``staging_fd`` (names in it returned), each checked
    against its sha256 and given its mode; raises :class:`DamagedObject` naming every file whose object is missing
    or damaged."""
    staged: dict[str, str] = {}
    damaged: list[str] = []
    for i, rel in enumerate(todo):
        digest = str(manifest[rel][0])
        name = str(i)
        try:
            fi = objects.reader(digest)  # whole or in chunks (runner/objects.py)
        except (FileNotFoundError, ValueError, KeyError, TypeError):  # no object, or an unreadable chunk index
            damaged.append(f"{display(rel)} (object {digest[:12]} missing)")
            continue
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=staging_fd)
        except BaseException:
            fi.close()
            raise
        try:
            with fi, open(fd, "wb") as fo:
                got: str | None = None  # None: a chunk of it is gone
                with contextlib.suppress(FileNotFoundError):
                    got, _ = copy_stream(fi, fo)
                if got == digest:
                    os.fchmod(fo.fileno(), int(manifest[rel][2]))
        except BaseException:
            os.unlink(name, dir_fd=staging_fd)
            raise
        if got != digest:
            os.unlink(name, dir_fd=staging_fd)
            damaged.append(f"{display(rel)} (" + (f"a chunk of object {digest[:12]} missing)" if got is None else
                                                  f"object {digest[:12]} does not match its sha256)"))
            continue
        staged[rel] = name
    if damaged:
        more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        raise DamagedObject(f"the checkpoint is damaged: {', '.join(damaged[:5])}{more}; the work directory was "
                            "left as it was", damaged)
    return staged
