"""Work-directory snapshots for durable steps: content-addressed objects and per-checkpoint manifests.

A checkpoint's manifest maps each tracked file of the work directory to ``[sha256, size, mode]``. File
contents live once in the session's object directory (``<session dir>/checkpoints/objects/ab/<sha256>``):
a file unchanged across 50 steps is stored once, and a checkpoint of a directory where one file changed
copies only that file. Hashes come from the :class:`~labd.runner.files.FileTracker`, which already
hashes exactly what changed (by size and mtime) after every step, so a checkpoint never reads an
unchanged file. A manifest is itself an object (JSON), so an unchanged directory costs one lookup.

Objects are written to a temporary name, verified against their digest while copied, made read-only, then
renamed: an object is never half-written and never modified, which lets the daemon hard-link a parent session's
objects into a branch's directory. A file is read through :class:`~labd.runner.workfs.WorkDir` (no symlink in any
component, a regular file only) and must hold exactly the digest its scan recorded: a file rewritten, replaced
(a symlink swapped in) or gone since the scan is not stored (:class:`SourceChanged`), never under a wrong digest.
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

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from labd.runner.files import walk_files
from labd.runner.names import BadKey, display, key_path
from labd.runner.workfs import UnsafePath, WorkDir, parts_of

__all__ = ["ObjectStore", "Snapshot", "restore", "walk_files", "load_manifest", "load_manifests", "manifest_object",
           "OBJECTS_DIR", "MAX_CHAIN", "DamagedObject", "TooLarge", "SourceChanged"]

#: relative to the session directory (the directory that holds ``work``)
OBJECTS_DIR = "checkpoints/objects"
#: a manifest is stored as the changes since the previous one; every MAX_CHAIN-th is stored whole, so
#: reading one follows at most this many links (and a step that changed one file stores a few hundred bytes
#: of manifest, not the whole directory's listing)
MAX_CHAIN = 32
_BLOCK = 1 << 20
_ZEROS = bytes(_BLOCK)


class DamagedObject(OSError):
    """A checkpoint object is missing, or its content does not match the sha256 it is named by."""

    def __init__(self, message: str, damaged: list[str] | None = None) -> None:
        super().__init__(message)
        self.damaged = damaged or []


class TooLarge(Exception):  # noqa: N818 - not an error of the store: the file is left out
    """A file being copied into the store passed the store's :attr:`ObjectStore.limit` (it grew since its scan)."""


class SourceChanged(Exception):  # noqa: N818 - not an error of the store: the file is left out
    """The file being copied into the store is not the one its scan saw; ``why``: ``gone`` (no regular file there any
    more: removed, renamed away, or a symlink or anything else in its place), ``changed`` (another content than the
    digest expected) or ``unreadable`` (opening or reading it failed). An error of the work directory's side, never of
    the store's: nothing was stored."""

    def __init__(self, why: str, message: str) -> None:
        super().__init__(message)
        self.why = why


class _Source:
    """A source file's reads, an OSError of which is the work directory's (:class:`SourceChanged`), not the store's."""

    def __init__(self, fi: Any) -> None:
        self._fi = fi

    def read(self, n: int) -> bytes:
        try:
            return bytes(self._fi.read(n))
        except OSError as exc:
            raise SourceChanged("unreadable", f"reading it failed: {exc}") from exc


def _open_source(src: Path, within: tuple[WorkDir, Path] | None) -> int:
    """A read-only fd of regular file ``src``: through ``within`` (the work directory, opened, and its path: no symlink
    in any component below it), else with O_NOFOLLOW on its last component. Raises :class:`SourceChanged`."""
    try:
        if within is not None:
            wd, root = within
            return wd.open_file(src.relative_to(root).as_posix())
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFoundError(errno.ENOENT, "not a regular file", str(src))
        return fd
    except FileNotFoundError as exc:
        raise SourceChanged("gone", f"no such regular file: {exc}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW on a symlink
            raise SourceChanged("gone", "a symlink, not a file") from None
        raise SourceChanged("unreadable", f"opening it failed: {exc}") from exc
    except ValueError as exc:  # not a path below the work directory
        raise SourceChanged("unreadable", str(exc)) from exc


def _copy_stream(fi: Any, fo: Any, limit: int | None = None) -> tuple[str, int]:
    """Copy file object ``fi`` to ``fo`` (a regular file), each 1 MiB block of zeros as a hole; returns (sha256 of
    what was copied, bytes: the apparent size). Raises :class:`TooLarge` past ``limit`` bytes."""
    h = hashlib.sha256()
    written = 0
    hole = False  # the last block was skipped: the size is set at the end
    for block in iter(lambda: fi.read(_BLOCK), b""):
        written += len(block)
        if limit is not None and written > limit:
            raise TooLarge(f"more than {limit} bytes")
        h.update(block)
        hole = len(block) == _BLOCK and block == _ZEROS
        if hole:
            fo.seek(_BLOCK, os.SEEK_CUR)
        else:
            fo.write(block)
    if hole:
        fo.truncate()
    return h.hexdigest(), written


def _copy_hashed(fi: Any, dst: Path, limit: int | None = None) -> tuple[str, int]:
    """Copy file object ``fi`` to ``dst`` (created); returns (sha256 of what was copied, bytes). ``dst`` is removed
    when the copy fails, whatever the reason (ENOSPC, EIO, :class:`TooLarge`, :class:`SourceChanged`...)."""
    try:
        with open(dst, "wb") as fo:
            return _copy_stream(fi, fo, limit)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


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
        #: :meth:`put_file` copies at most this many bytes (None: any), else raises :class:`TooLarge`
        self.limit: int | None = None
        #: the work directory (opened, and its path) :meth:`put_file` reads files of (None: any path)
        self.within: tuple[WorkDir, Path] | None = None

    def bounded(self, limit: int, within: tuple[WorkDir, Path] | None = None) -> ObjectStore:
        """The same store, its :meth:`put_file` copying at most ``limit`` bytes, of files of ``within`` (the opened
        work directory and its path: the file is opened through it, no symlink followed in any component)."""
        store = ObjectStore(self.root)
        store._known, store.limit, store.within = self._known, limit, within
        return store

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
        """Copy regular file ``src`` in as object ``expected`` (unless it exists); returns (``expected``, bytes
        written). ``src`` is opened without following a symlink (through :attr:`within`, in no component) and must
        hold exactly ``expected``: else :class:`SourceChanged` (gone, changed, unreadable: the source's side) and
        nothing is stored. Raises :class:`TooLarge` past :attr:`limit` bytes, and OSError only for an error of the
        store's side (a full disk); never leaves a temporary file."""
        if self.has(expected):
            return expected, 0
        with open(_open_source(src, self.within), "rb") as fi:
            tmp = self._tmp()
            digest, written = _copy_hashed(_Source(fi), tmp, self.limit)
        if digest != expected:  # rewritten or replaced since the scan: never an object under another digest
            tmp.unlink()
            raise SourceChanged("changed", "its content is not what its scan hashed")
        if self.has(digest):  # stored meanwhile (a concurrent checkpoint)
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
            fi = open(objects.path(digest), "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
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
                got, _ = _copy_stream(fi, fo)
                if got == digest:
                    os.fchmod(fo.fileno(), int(manifest[rel][2]))
        except BaseException:
            os.unlink(name, dir_fd=staging_fd)
            raise
        if got != digest:
            os.unlink(name, dir_fd=staging_fd)
            damaged.append(f"{display(rel)} (object {digest[:12]} does not match its sha256)")
            continue
        staged[rel] = name
    if damaged:
        more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        raise DamagedObject(f"the checkpoint is damaged: {', '.join(damaged[:5])}{more}; the work directory was "
                            "left as it was", damaged)
    return staged
