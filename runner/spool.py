"""The runner's event spool: every emitted event is appended here before ``emit()`` returns.

One file per session, ``<sessions_dir>/<id>/events.spool`` — beside the session's work directory, not in
it (the work directory is the agent's to write; the spool is the runner's record). The file is a sequence
of length-prefixed, checksummed records::

    header (16 bytes, little endian): u32 body length | u32 crc32(src_seq bytes + body) | u64 src_seq
    body: the event as the runner sends it, JSON ``[src_seq, ts, kind, node_id, parent, payload]``

Plain ``write(2)`` on an ``O_APPEND`` descriptor, not a memory map: once ``write`` has returned, the bytes
are in the kernel's page cache, which outlives the process (SIGKILL, OOM kill), and the file grows
without remapping or a preallocated size to manage. It costs one system call per event (~1-2 µs), about
what the memory copy into a map plus the bookkeeping for growing it would. It is not ``fsync``ed: a
power loss may lose the tail, as with the store's own ``synchronous=NORMAL``.

The daemon reads a spool (:func:`read_spool`) when a runner has ended, and before it decides how the
session ended; records it already has (by ``src_seq``) are skipped, so each event is stored exactly once.
A torn or corrupt tail (a write cut short) ends the reading; everything before it is used. The channel
truncates or compacts the file behind the daemon's acknowledgements, and removes it when everything was
acknowledged.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["Spool", "read_spool", "spool_path", "SPOOL_NAME", "HEADER"]

SPOOL_NAME = "events.spool"
HEADER = struct.Struct("<IIQ")
MAX_RECORD = 1 << 31  # a length beyond this is corruption, not an event


def spool_path(session_dir: str | os.PathLike[str]) -> Path:
    """Where the spool of the session whose directory is ``session_dir`` lives."""
    return Path(session_dir) / SPOOL_NAME


def _record(src_seq: int, body: bytes) -> bytes:
    seq_bytes = src_seq.to_bytes(8, "little")
    return HEADER.pack(len(body), zlib.crc32(body, zlib.crc32(seq_bytes)), src_seq) + body


class Spool:
    """Append-only spool file of one runner. Not thread-safe: the channel calls it under its lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self._fd).st_size

    def append(self, src_seq: int, body: bytes) -> None:
        """Append one record; when this returns, a SIGKILL of this process no longer loses it."""
        data = _record(src_seq, body)
        view = memoryview(data)
        while view:  # a regular file takes it all at once; a short write (e.g. a full disk) raises below
            n = os.write(self._fd, view)
            if n == 0:
                raise OSError("spool write made no progress")
            view = view[n:]
        self.size += len(data)

    def truncate(self) -> None:
        """Everything in the spool is acknowledged: start it again from empty."""
        os.ftruncate(self._fd, 0)
        self.size = 0

    def rewrite(self, records: Iterable[tuple[int, bytes]]) -> None:
        """Replace the spool by ``records`` (the unacknowledged tail): written to a new file, then renamed
        over the old one, so a kill at any point leaves one complete spool."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        size = 0
        try:
            chunk: list[bytes] = []
            for src_seq, body in records:
                chunk.append(_record(src_seq, body))
                if len(chunk) >= 1024:
                    data = b"".join(chunk)
                    os.write(fd, data)
                    size += len(data)
                    chunk = []
            if chunk:
                data = b"".join(chunk)
                os.write(fd, data)
                size += len(data)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd, self.size = fd, size

    def close(self, remove: bool = False) -> None:
        """Close the file; ``remove`` deletes it (everything in it reached the store)."""
        if self._fd < 0:
            return
        os.close(self._fd)
        self._fd = -1
        if remove:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def read_spool(path: str | os.PathLike[str], after: int = 0) -> Iterator[tuple[int, bytes]]:
    """Yield ``(src_seq, body)`` of every intact record with ``src_seq > after``, in file order.

    Stops at the first record that is torn (file ends inside it) or fails its checksum: a write cut short
    by a crash can only be the last one, and nothing after a damaged record can be trusted to be in order.
    A missing file yields nothing."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in finally (a generator)
    except FileNotFoundError:
        return
    try:
        size = HEADER.size
        while True:
            head = f.read(size)
            if len(head) < size:
                return
            length, crc, src_seq = HEADER.unpack(head)
            if length > MAX_RECORD:
                return
            if src_seq <= after:  # already stored: skip it without reading or checking it
                f.seek(length, os.SEEK_CUR)
                continue
            body = f.read(length)
            if len(body) < length or zlib.crc32(body, zlib.crc32(src_seq.to_bytes(8, "little"))) != crc:
                return
            yield src_seq, body
    finally:
        f.close()
