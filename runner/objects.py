"""The session's object store (``<session dir>/checkpoints/objects``): content-addressed, write-once files, named by
their sha256, that checkpoints' manifests and results point at (:mod:`labd.runner.checkpoint`).

Objects are written to a temporary name, verified against their digest while copied, made read-only, then
renamed: an object is never half-written and never modified, which lets the daemon hard-link a parent session's
objects into a branch's directory. A file is read through :class:`~labd.runner.workfs.WorkDir` (no symlink in any
component, a regular file only) and must hold exactly the digest its scan recorded: a file rewritten, replaced
(a symlink swapped in) or gone since the scan is not stored (:class:`SourceChanged`), never under a wrong digest.
A write that fails (a full disk) removes its temporary file and raises OSError. 1 MiB of zeros is written as a
hole.

**Large files are stored in chunks** (from :data:`CHUNKED_FROM` bytes): the file's object is then an index,
``ab/<sha256>.chunks`` (JSON: its size and the digests of its 1 MiB chunks, in order), and each chunk is an object of
its own. A file that grows by appends (a log, a results table) keeps every full chunk it had, so a checkpoint of
it stores only its new tail: before chunks, a growing file was stored whole at every step until the session's
cap. The chunks of a file are written to temporary names, and renamed in only once the whole file has proven to
hold the digest its scan saw; the index comes last, so an index never names a chunk that is not there (unless one
was removed since: a reader then raises, and a restore reports the file damaged). Readers go through
:meth:`ObjectStore.reader` (either form).

**What a store adds is bounded** (:attr:`ObjectStore.new_limit`): the bytes of the objects a file adds (a whole
object's size; a chunked file's chunks not stored yet, by their length, and its index), not its size. A chunked file
that fits the bound by its size is copied as it is read; one that does not (a log grown past the cap, most of its
chunks stored already) is read through first, counting what it adds (:class:`OverCap` as soon as that passes the
bound: nothing is written), and only then are its new chunks read again (each checked against the digest the first
read gave) and written: a file rewritten entirely costs at most the bound's reading, never its writing. A file copied
whole (small by its ``fstat``) stops at the bound as well: emptied after the open and written back, it is not small.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

import orjson

from labd.ipc.safe_files import open_regular
from labd.runner.objsource import OverCap, Source, SourceChanged, TooLarge, open_source
from labd.runner.workfs import WorkDir

__all__ = ["ObjectStore", "DamagedObject", "TooLarge", "OverCap", "SourceChanged", "copy_stream", "CHUNK_BYTES",
           "CHUNKED_FROM", "index_bytes", "index_least", "read_json_object", "MAX_JSON_OBJECT"]

_BLOCK = 1 << 20
_ZEROS = bytes(_BLOCK)
#: a file of at least this many bytes is stored as chunks of CHUNK_BYTES (see the module's docstring)
CHUNKED_FROM = 4 << 20
CHUNK_BYTES = _BLOCK
_DIGEST = re.compile(r"[0-9a-f]{64}")
_ZERO_CHUNK = hashlib.sha256(_ZEROS).hexdigest()


def index_bytes(size: int) -> int:
    """At most how many bytes the chunk index of a file of ``size`` bytes takes (a quoted digest and a comma per
    chunk, and the rest of the JSON)."""
    return -(-size // CHUNK_BYTES) * 67 + 64


def index_least(size: int) -> int:
    """At least how many bytes the chunk index of a file of ``size`` bytes takes (its JSON with a one-digit size): what
    storing such a file adds even when every chunk of it is stored."""
    return -(-size // CHUNK_BYTES) * 67 + 37


#: bytes of a JSON object (a manifest, a chunk index) read at most: a larger one is refused as damaged (ValueError).
#: A manifest of the largest scan (20,000 files of 4,096-character paths) is about 82 MB.
MAX_JSON_OBJECT = 256 << 20


def read_json_object(path: Path) -> Any:
    """The JSON of an object's file (opened as :func:`~labd.ipc.safe_files.open_regular` does: the store lies in the
    session's directory, which its code may write; a FIFO put in place of an object blocked the daemon's read worker
    for good), at most :data:`MAX_JSON_OBJECT` bytes (ValueError past
    it: a sparse file of any size put in its place was read whole into the daemon's memory)."""
    with open_regular(path) as f:
        data = f.read(MAX_JSON_OBJECT + 1)
    if len(data) > MAX_JSON_OBJECT:
        raise ValueError(f"object {path.name} is over {MAX_JSON_OBJECT} bytes")
    return orjson.loads(data)


class DamagedObject(OSError):
    """A checkpoint object is missing, or its content does not match the sha256 it is named by."""

    def __init__(self, message: str, damaged: list[str] | None = None) -> None:
        super().__init__(message)
        self.damaged = damaged or []


def copy_stream(fi: Any, fo: Any, limit: int | None = None) -> tuple[str, int]:
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
            return copy_stream(fi, fo, limit)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


class ObjectStore:
    """Content-addressed, write-once files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._known: set[str] = set()
        #: :meth:`put_file` copies at most this many bytes (None: any), else raises :class:`TooLarge`
        self.limit: int | None = None
        #: :meth:`put_file` adds at most this many bytes of new objects (None: any), else raises :class:`OverCap`
        self.new_limit: int | None = None
        #: the work directory (opened, and its path) :meth:`put_file` reads files of (None: any path)
        self.within: tuple[WorkDir, Path] | None = None
        #: when a list: each object this store writes is appended to it, by its name under ``root``
        #: (``ab/<sha256>``, ``ab/<sha256>.chunks``): what a remote runner ships home (runner/ship.py)
        self.added: list[str] | None = None

    def bounded(self, limit: int, within: tuple[WorkDir, Path] | None = None,
                new_limit: int | None = None) -> ObjectStore:
        """The same store, its :meth:`put_file` copying at most ``limit`` bytes, and adding at most ``new_limit`` bytes
        of new objects, of files of ``within`` (the opened work directory and its path: the file is opened through
        it, no symlink followed in any component)."""
        store = ObjectStore(self.root)
        store._known, store.limit, store.within, store.new_limit = self._known, limit, within, new_limit
        store.added = self.added
        return store

    def path(self, digest: str) -> Path:
        """Where object ``digest`` is (stored whole). Raises ValueError for anything but a sha256 in lowercase hex:
        digests come from manifests and chunk indexes, which the session's runner wrote, and the daemon links and
        reads objects by them (``../../daemon.key`` must never name a path)."""
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"not an object digest: {digest[:80]!r}")
        return self.root / digest[:2] / digest

    def index_path(self, digest: str) -> Path:
        """Where the chunk index of a file stored in chunks is (ValueError as :meth:`path`)."""
        return self.path(digest).with_name(f"{digest}.chunks")

    def has(self, digest: str) -> bool:
        """Whether object ``digest`` is stored, whole or as a chunk index (its chunks are not checked: see
        :meth:`complete`)."""
        if digest in self._known:
            return True
        if self.path(digest).exists() or self.index_path(digest).exists():
            self._known.add(digest)
            return True
        return False

    def _index(self, digest: str) -> dict[str, Any] | None:
        """The chunk index of object ``digest`` (``size``, ``chunk``, ``chunks``), None if it has none."""
        try:
            return dict(read_json_object(self.index_path(digest)))
        except FileNotFoundError:
            return None

    def chunks(self, digest: str) -> list[str] | None:
        """The chunk digests of object ``digest`` if it is stored in chunks, else None (whole, or not stored)."""
        index = self._index(digest)
        return None if index is None else [str(c) for c in index["chunks"]]

    def complete(self, digest: str) -> bool:
        """Whether object ``digest`` can be read: stored whole, or its index and every chunk it names are there
        (False for anything but a digest, and for an index that is unreadable or names anything but digests)."""
        try:
            if self.path(digest).exists():
                return True
            chunks = self.chunks(digest)
            return chunks is not None and all(self.path(c).exists() for c in chunks)
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def parts(self, digest: str) -> list[Path]:
        """The files object ``digest`` is made of (relative to :attr:`root`): itself, or its index and its chunks
        (what a branch links from its parent)."""
        chunks = self.chunks(digest)
        if chunks is None:
            return [self.path(digest).relative_to(self.root)]
        return [self.index_path(digest).relative_to(self.root)] + [self.path(c).relative_to(self.root)
                                                                   for c in dict.fromkeys(chunks)]

    def size(self, digest: str) -> int:
        """The size of the content of object ``digest``. Raises FileNotFoundError if it is not stored."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            index = self._index(digest)
            if index is None:
                raise
        return int(index["size"])

    def reader(self, digest: str) -> io.BufferedReader:
        """A binary file object reading the content of object ``digest`` (either form). Raises FileNotFoundError if it
        is not stored (reading a chunked one whose chunk is gone, too), ValueError (or KeyError, TypeError) if its
        digest, or its index, is not one."""
        try:
            return open_regular(self.path(digest))
        except FileNotFoundError:
            chunks = self.chunks(digest)
            if chunks is None:
                raise
        for chunk in chunks:
            self.path(chunk)  # ValueError now, not halfway through the read, for an index naming anything else
        return io.BufferedReader(_Chunks(self, chunks), buffer_size=CHUNK_BYTES)

    def sweep(self) -> None:
        """Remove the temporary files an earlier runner of the session left (it was killed while storing a file:
        up to a chunk each, kept for good and counted against the session's cap). Only this process writes the store
        while it runs (one runner per session), so any other process's are stale."""
        mine = f".tmp-{os.getpid()}-"
        try:
            with os.scandir(self.root) as entries:
                for entry in entries:
                    if entry.name.startswith(".tmp-") and not entry.name.startswith(mine):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
        except FileNotFoundError:  # no store yet
            pass

    def _tmp(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f".tmp-{os.getpid()}-{len(self._known)}-{os.urandom(4).hex()}"

    def _commit(self, tmp: Path, digest: str, dest: Path | None = None) -> None:
        """Make ``tmp`` object ``digest``, read-only, at ``dest`` (its path, or its chunk index's)."""
        dest = self.path(digest) if dest is None else dest
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._known.add(digest)
        if self.added is not None:
            self.added.append(f"{dest.parent.name}/{dest.name}")

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
        nothing is stored. Raises :class:`TooLarge` past :attr:`limit` bytes, :class:`OverCap` when it would add more
        than :attr:`new_limit` bytes, and OSError only for an error of the store's side (a full disk); never leaves a
        temporary file."""
        if self.has(expected):
            return expected, 0
        with open(open_source(src, self.within), "rb") as fi:
            size = os.fstat(fi.fileno()).st_size
            if self.limit is not None and size > self.limit:  # grown since its scan: changed, whatever it adds
                raise TooLarge(f"more than {self.limit} bytes")
            if size >= CHUNKED_FROM:
                return self._put_chunks(fi, size, expected)
            if self.new_limit is not None and size > self.new_limit:
                raise OverCap(size)
            tmp = self._tmp()
            # at most what it may add, too: emptied after the fstat and written back, it would pass new_limit
            bound = min((b for b in (self.limit, self.new_limit) if b is not None), default=None)
            digest, written = _copy_hashed(Source(fi), tmp, bound)
        if digest != expected:  # rewritten or replaced since the scan: never an object under another digest
            tmp.unlink()
            raise SourceChanged("changed", "its content is not what its scan hashed")
        if self.has(digest):  # stored meanwhile (a concurrent checkpoint)
            tmp.unlink()
            return digest, 0
        self._commit(tmp, digest)
        return digest, written

    def _put_chunks(self, fi: Any, size: int, expected: str) -> tuple[str, int]:
        """:meth:`put_file` of a large file (``size``: its ``fstat``): its chunks, then its index (see the module's
        docstring). Raises :class:`OverCap` as soon as its new chunks pass :attr:`new_limit`."""
        src = Source(fi)
        limit = self.new_limit
        eager = limit is None or size + index_bytes(size) <= limit  # new chunks written as they are read
        whole = hashlib.sha256()
        chunks: list[str] = []
        fresh: dict[str, Path] = {}  # new chunks, at temporary names until the whole file has proven to be `expected`
        later: dict[str, int] = {}  # new chunks not written yet (not eager): digest -> offset
        total = adds = 0
        try:
            for block in iter(lambda: src.read(CHUNK_BYTES), b""):
                total += len(block)
                if self.limit is not None and total > self.limit:
                    raise TooLarge(f"more than {self.limit} bytes")
                whole.update(block)
                digest = _ZERO_CHUNK if block == _ZEROS else hashlib.sha256(block).hexdigest()
                chunks.append(digest)
                if digest in fresh or digest in later or self.has(digest):
                    continue
                adds += len(block)
                if limit is not None and adds > limit:
                    raise OverCap(adds)
                if eager:
                    self._put_chunk(fresh, digest, block)
                else:
                    later[digest] = total - len(block)
            if whole.hexdigest() != expected:  # rewritten or replaced since the scan
                raise SourceChanged("changed", "its content is not what its scan hashed")
            index = orjson.dumps({"size": total, "chunk": CHUNK_BYTES, "chunks": chunks})
            if limit is not None and adds + len(index) > limit:
                raise OverCap(adds + len(index))
            for digest, offset in later.items():  # read again: each must be the chunk the whole file was proven with
                try:
                    block = os.pread(fi.fileno(), CHUNK_BYTES, offset)
                except OSError as exc:
                    raise SourceChanged("unreadable", f"reading it failed: {exc}") from exc
                if hashlib.sha256(block).hexdigest() != digest:
                    raise SourceChanged("changed", "its content is not what its scan hashed")
                self._put_chunk(fresh, digest, block)
            written = 0
            for digest, tmp in fresh.items():
                if self.has(digest):  # stored meanwhile
                    tmp.unlink()
                else:
                    written += tmp.stat().st_size
                    self._commit(tmp, digest)
            fresh.clear()
            if self.has(expected):
                return expected, written
            tmp = fresh[expected] = self._tmp()
            tmp.write_bytes(index)
            self._commit(tmp, expected, self.index_path(expected))
            return expected, written + len(index)
        finally:
            for tmp in fresh.values():
                tmp.unlink(missing_ok=True)

    def _put_chunk(self, fresh: dict[str, Path], digest: str, block: bytes) -> None:
        """Write chunk ``digest`` to a temporary name, recorded in ``fresh`` (a chunk of zeros: a hole)."""
        tmp = fresh[digest] = self._tmp()
        with open(tmp, "wb") as fo:
            copy_stream(io.BytesIO(block), fo)

    def get_bytes(self, digest: str) -> bytes:
        with self.reader(digest) as f:
            return f.read()

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


class _Chunks(io.RawIOBase):
    """The content of a file stored in chunks, read chunk after chunk (:meth:`ObjectStore.reader`)."""

    def __init__(self, store: ObjectStore, chunks: list[str]) -> None:
        super().__init__()
        self._store = store
        self._left = list(reversed(chunks))
        self._f: Any = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while True:
            if self._f is None:
                if not self._left:
                    return 0
                self._f = open(self._store.path(self._left.pop()), "rb")  # noqa: SIM115 - closed below or in close()
            n = self._f.readinto(b)
            if n:
                return int(n)
            self._f.close()
            self._f = None

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        super().close()
