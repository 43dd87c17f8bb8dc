"""The runner's event spool: every emitted event is appended here before ``emit()`` returns.

One file per session, ``<sessions_dir>/<id>/events.spool`` — beside the session's work directory, not in
it (the work directory is the agent's to write; the spool is the runner's record). The file is a sequence
of length-prefixed, checksummed records::

    header (16 bytes, little endian): u32 body length | u32 crc32(src_seq bytes + body) | u64 src_seq
    body: the event as the runner sends it, JSON ``[src_seq, ts, kind, node_id, parent, payload]``

Memory-mapped (``MAP_SHARED``), not ``write(2)``: a store into the shared mapping is in the kernel's page
cache as soon as it is made, which outlives the process (SIGKILL, OOM kill), and it costs a memory copy
instead of a system call per event (measured on this box: ~5 µs per 300-byte record including the CRC,
against ~18 µs for an ``O_APPEND`` write under load). The file grows by :data:`SEGMENT` at a time; the
blocks are allocated with ``posix_fallocate`` before they are mapped, so a full disk is an error at that
point, never a SIGBUS. The mapped tail beyond the last record is zeros, which end the reading. It is not
``fsync``ed: a power loss may lose the tail, as with the store's own ``synchronous=NORMAL``.

The daemon reads a spool (:func:`read_spool`) when a runner has ended, and before it decides how the
session ended; records it already has (by ``src_seq``) are skipped, so each event is stored exactly once.
A torn or corrupt tail (a write cut short) ends the reading; everything before it is used. The channel
empties or compacts the file behind the daemon's acknowledgements, and removes it when everything was
acknowledged. Emptied, a small file keeps its pages (zeroed in place) and the pages ahead of the last record are
faulted in 64 at a time (``MADV_POPULATE_WRITE``): a page fault taken one by one in the middle of a workflow's
work costs it tens of microseconds.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

from labd.ipc.safe_files import open_regular
from labd.runner.pipes import write_all

__all__ = ["Spool", "read_spool", "scan_spool", "spool_path", "SPOOL_NAME", "HEADER", "prepare_unnamed"]

SPOOL_NAME = "events.spool"
HEADER = struct.Struct("<IIQ")
HEADER_SIZE = HEADER.size
_pack_into = HEADER.pack_into
_crc32 = zlib.crc32
MAX_RECORD = 1 << 31  # a length beyond this is corruption, not an event
SEGMENT = 1 << 20  # the mapped file grows by this much at a time
SPOOL_TRUNCATE_BYTES = 1 << 20  # everything acked and the spool is larger than this: empty it
#: ... in place (zeroed, its pages kept) if its file is at most this long, else truncated (disk space given back)
SPOOL_REUSE_BYTES = 4 * SEGMENT
SPOOL_COMPACT_BYTES = 64 << 20  # the spool is larger than this and mostly acked: rewrite its tail
#: the pages ahead of the last record are made present and writable this many bytes at a time (see _grow)
POPULATE_BYTES = 256 << 10
#: madvise(2) advice that faults a range in writable in one call (Linux >= 5.14; Python 3.11's mmap lacks the name)
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
_ZEROS = bytes(64 << 10)  # what an emptied-in-place spool is overwritten with, a chunk at a time
HEAD_KEPT = 256  # of a record too long to read whole (scan_spool): enough for its src_seq, time and kind


def spool_path(session_dir: str | os.PathLike[str]) -> Path:
    """Where the spool of the session whose directory is ``session_dir`` lives."""
    return Path(session_dir) / SPOOL_NAME


def _record(src_seq: int, body: bytes) -> bytes:
    seq_bytes = src_seq.to_bytes(8, "little")
    return HEADER.pack(len(body), zlib.crc32(body, zlib.crc32(seq_bytes)), src_seq) + body


class Spool:
    """Append-only, memory-mapped spool file of one runner. Not thread-safe: the channel calls it under its lock."""

    def __init__(self, path: str | os.PathLike[str], prepared: tuple[int, mmap.mmap] | None = None) -> None:
        self.path = Path(path)
        self._map: mmap.mmap | None = None
        #: appends below this offset need no check: the mapping covers it and its pages were populated (_grow)
        self._ready = 0
        if prepared is not None:  # see prepare_unnamed: given a name, empty, mapped, its first pages populated
            self._fd, self._map = prepared
            self.size = 0
            self._ready = min(len(self._map), POPULATE_BYTES) - 1  # as _grow leaves it
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.size = _data_end(self.path)  # bytes of records, up to the first torn, corrupt or zero one
        # Nothing beyond them is ever read, but it may not be zeros: a runner killed while emptying its spool in
        # place (truncate) leaves acknowledged records behind the zeros it wrote, which our appends could end
        # next to. Cut them off, so that the file beyond our records is zeros again.
        if os.fstat(self._fd).st_size > self.size:
            os.ftruncate(self._fd, self.size)
        self._reserve(self.size + 1)

    @classmethod
    def link_prepared(cls, prepared: tuple[int, mmap.mmap], path: str | os.PathLike[str]) -> Spool | None:
        """The spool at ``path``, made from an unnamed file of :func:`prepare_unnamed` by giving it that name
        (``linkat``); None (and ``prepared`` released) if that cannot be done: ``path`` exists already (a resumed
        session's), another filesystem, no ``/proc``. The caller then opens ``path`` the ordinary way."""
        fd, m = prepared
        target = Path(path)
        try:
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                # linkat(AT_SYMLINK_FOLLOW) through /proc names the open file; os.link uses it only with a dir fd
                dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.link(f"/proc/self/fd/{fd}", target.name, dst_dir_fd=dfd, follow_symlinks=True)
                finally:
                    os.close(dfd)
                return cls(target, prepared)
        except OSError:
            pass
        m.close()
        os.close(fd)
        return None

    def _reserve(self, need: int) -> None:
        """Make the mapping at least ``need`` bytes long. The blocks are allocated first (posix_fallocate): a full
        disk is an OSError here, never a SIGBUS on a later store into the map."""
        cap = len(self._map) if self._map is not None else 0
        if need <= cap:
            return
        new = -(-need // SEGMENT) * SEGMENT
        os.posix_fallocate(self._fd, 0, new)
        if self._map is None:
            self._map = mmap.mmap(self._fd, new)
        else:
            self._map.resize(new)

    def _grow(self, end: int) -> None:
        """Make room for a record ending at ``end`` and populate the pages after it, :data:`POPULATE_BYTES` at a
        time. Each first store into a page of a shared file mapping is a page fault (on ext4 with its
        ``page_mkwrite``); one ``MADV_POPULATE_WRITE`` call for 64 pages costs less than a few of those taken one
        by one amid a workflow's own work (measured: docs/benchmarks.md §24)."""
        self._reserve(end + 1)  # +1: a zero byte after the last record ends the reading
        m = self._map
        assert m is not None
        start = end // mmap.PAGESIZE * mmap.PAGESIZE
        # a new spool's first event populates a few pages only: it is on a session's start path
        ahead = POPULATE_BYTES if start else PREPARED_PAGES * mmap.PAGESIZE
        stop = min(len(m), max(end + 1, start + ahead))
        _populate(m, start, stop)
        self._ready = stop - 1  # strictly below: the zero byte after the record stays inside what is ready

    def append(self, src_seq: int, body: bytes) -> None:
        """Append one record; when this returns, a SIGKILL of this process no longer loses it (the bytes are in
        the page cache through the shared mapping)."""
        # Header and body go straight into the map (no joined copy, no helper call): this runs once per event.
        n = len(body)
        start = self.size
        end = start + HEADER_SIZE + n
        if end >= self._ready:
            self._grow(end)
        m: mmap.mmap = self._map  # type: ignore[assignment]  # mapped: end < _ready, which only _grow raises
        _pack_into(m, start, n, _crc32(body, _crc32(src_seq.to_bytes(8, "little"))), src_seq)
        m[start + HEADER_SIZE:end] = body
        self.size = end

    def behind_acks(self, first_seq: int, *unacked: list[bytes]) -> None:
        """Shed what the daemon has acknowledged: truncate when nothing is unacknowledged, or rewrite the file to
        the ``unacked`` records (in order, from ``first_seq`` on; given in parts, not copied) once it is over
        :data:`SPOOL_COMPACT_BYTES` and mostly acked. Below :data:`SPOOL_TRUNCATE_BYTES` it is left as it is."""
        if self.size < SPOOL_TRUNCATE_BYTES:
            return
        if not any(unacked):
            self.truncate()
        elif self.size > SPOOL_COMPACT_BYTES and sum(sum(map(len, part)) for part in unacked) * 2 < self.size:
            self.rewrite(enumerate(chain.from_iterable(unacked), first_seq))

    def truncate(self) -> None:
        """Everything in the spool is acknowledged: start it again from empty. A file of at most
        :data:`SPOOL_REUSE_BYTES` is emptied in place: its records are overwritten with zeros (what ends the
        reading) and its pages stay mapped, so the next records cost no page faults; a larger one is cut to
        nothing, giving its disk space back. A kill half way through the zeroing leaves zeros ahead of
        acknowledged records: the reading ends at the zeros, and nothing unacknowledged is in the file."""
        m = self._map
        if m is not None and len(m) <= SPOOL_REUSE_BYTES:
            zeros, size = memoryview(_ZEROS), self.size
            for off in range(0, size, len(zeros)):
                n = min(len(zeros), size - off)
                m[off:off + n] = zeros[:n]
            self.size = 0
            return
        self._unmap()
        os.ftruncate(self._fd, 0)
        self.size = 0
        self._reserve(1)

    def rewrite(self, records: Iterable[tuple[int, bytes]]) -> None:
        """Replace the spool by ``records`` (the unacknowledged tail): written to a new file, then renamed
        over the old one, so a kill at any point leaves one complete spool."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        size = 0
        try:
            chunk: list[bytes] = []
            for src_seq, body in records:
                chunk.append(_record(src_seq, body))
                if len(chunk) >= 1024:
                    size += _write_chunk(fd, chunk)
                    chunk = []
            if chunk:
                size += _write_chunk(fd, chunk)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        self._unmap()
        os.close(self._fd)
        self._fd, self.size = fd, size
        self._reserve(size + 1)

    def _unmap(self) -> None:
        self._ready = 0
        if self._map is not None:
            self._map.close()
            self._map = None

    def close(self, remove: bool = False) -> None:
        """Close the file (cut to its records); ``remove`` deletes it (everything in it reached the store)."""
        if self._fd < 0:
            return
        self._unmap()
        if not remove:
            os.ftruncate(self._fd, self.size)
        os.close(self._fd)
        self._fd = -1
        if remove:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


#: pages a new spool's first event populates (it is on a session's start path), and the pages touched where the
#: kernel cannot populate a range
PREPARED_PAGES = 4


def prepare_unnamed(directory: str | os.PathLike[str]) -> tuple[int, mmap.mmap]:
    """An unnamed (``O_TMPFILE``) file in ``directory``, its first :data:`SEGMENT` allocated and mapped and its
    first pages touched: what :class:`Spool` does for a new spool, done ahead (a spare runner, before its
    session exists). It has no name until :meth:`Spool.link_prepared` gives it one, so it vanishes with its
    process if never used. Raises OSError where unnamed files are not supported."""
    fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, SEGMENT)
        m = mmap.mmap(fd, SEGMENT)
    except BaseException:
        os.close(fd)
        raise
    _populate(m, 0, min(SEGMENT, POPULATE_BYTES))  # the first records' page faults, paid ahead
    return fd, m


def _populate(m: mmap.mmap, start: int, stop: int) -> None:
    """Fault in the pages of ``m[start:stop]`` writable (``start`` page-aligned); where the kernel cannot
    (before Linux 5.14), touch the first :data:`PREPARED_PAGES` instead and let the rest fault on first store."""
    try:
        m.madvise(MADV_POPULATE_WRITE, start, stop - start)
    except (OSError, ValueError):
        for page in range(start, min(stop, start + PREPARED_PAGES * mmap.PAGESIZE), mmap.PAGESIZE):
            m[page] = m[page]  # a store: the page is in the page cache and writable in this mapping


def _write_chunk(fd: int, records: list[bytes]) -> int:
    data = b"".join(records)
    write_all(fd, data)
    return len(data)


def _data_end(path: Path) -> int:
    """Offset just after the last intact record of an existing spool (0 for a new one)."""
    end = 0
    with open(path, "rb") as f:
        while True:
            head = f.read(HEADER.size)
            if len(head) < HEADER.size:
                return end
            length, crc, src_seq = HEADER.unpack(head)
            body = f.read(length) if 0 < length <= MAX_RECORD else b""
            if len(body) != length or length == 0 or zlib.crc32(body, zlib.crc32(src_seq.to_bytes(8, "little"))) != crc:
                return end
            end += HEADER.size + length


def read_spool(path: str | os.PathLike[str], after: int = 0) -> Iterator[tuple[int, bytes]]:
    """Yield ``(src_seq, body)`` of every intact record with ``src_seq > after``, in file order.

    Stops at the first record that is torn (file ends inside it) or fails its checksum: a write cut short
    by a crash can only be the last one, and nothing after a damaged record can be trusted to be in order.
    A missing file yields nothing."""
    for src_seq, body, _size, _end in scan_spool(path, after):
        assert body is not None  # (no skips asked for)
        yield src_seq, body


def scan_spool(path: str | os.PathLike[str], after: int = 0, *, start: int = 0, max_body: int | None = None,
               skips: bool = False) -> Iterator[tuple[int, bytes | None, int, int]]:
    """Yield ``(src_seq, body, size, end)`` of every intact record with ``src_seq > after``, from byte ``start``
    (a record boundary: 0, or an ``end`` this yielded before) in file order; ``size`` is the body's length and
    ``end`` the offset just past the record. As :func:`read_spool`, except that of a body longer than ``max_body``
    only its first :data:`HEAD_KEPT` bytes are read and yielded, unchecked (the daemon reads spools written by
    processes it does not trust: its memory stays bounded, and a checksum guards against damage, not forgery; a
    session's code made the daemon read gigabytes of a sparse file for every record: attack review). ``skips``:
    also yield ``(src_seq, None, size, end)`` for each record skipped (``src_seq <= after``), so the caller can
    bound the work and remember where it got to."""
    try:  # the daemon reads what a session's runner (the workflow's code) may have put there: not through a
        # symlink, and only a regular file (a FIFO in its place blocked the daemon's ingest, every session's record)
        f = open_regular(path)  # closed in finally (a generator)
    except FileNotFoundError:
        return
    try:
        size = HEADER.size
        total = os.fstat(f.fileno()).st_size
        pos = f.seek(start)
        while True:
            head = f.read(size)
            if len(head) < size:
                return
            length, crc, src_seq = HEADER.unpack(head)
            if length > MAX_RECORD or (length == 0 and crc == 0 and src_seq == 0):  # damage, or the zeroed tail
                return
            end = pos + size + length
            if end > total:  # torn: the file ends inside this record
                return
            if src_seq <= after:  # already stored: skip it without reading or checking it
                pos = f.seek(end)
                if skips:
                    yield src_seq, None, length, end
                continue
            if max_body is not None and length > max_body:
                head_kept = f.read(min(length, HEAD_KEPT))
                if len(head_kept) < min(length, HEAD_KEPT):
                    return
                pos = f.seek(end)
                yield src_seq, head_kept, length, end
                continue
            body = f.read(length)
            if len(body) < length or _crc32(body, _crc32(src_seq.to_bytes(8, "little"))) != crc:
                return
            pos = end
            yield src_seq, body, length, end
    finally:
        f.close()
