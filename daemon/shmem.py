"""Memory a session holds in shmem files it has open but has not mapped: ``memfd_create`` files, deleted tmpfs files.

PSS counts only mapped pages. A page written into a memfd or a tmpfs file with ``write`` (or ``fallocate``) and
never mapped is in no process's page tables, yet it is memory the kernel cannot reclaim while the file lives (an
attack review held 600 MiB under a 200 MiB limit). :class:`ShmemCache` finds such files through each process's
descriptors and counts their allocated size (``st_blocks``), once per file in a tree (by device and inode), minus
what the tree's mappings of the same file hold of its pages (per mapping ``Pss - Anonymous`` from
``/proc/<pid>/smaps``, read only for processes that hold such a file): PSS counts those already, and the anonymous
part of a private mapping is copy-on-write pages that are not the file's. A file both open and mapped thus counts
once: its mapped pages by PSS, the rest here.

Only *unlinked* files count (``st_nlink == 0``: memfds, and tmpfs/hugetlbfs files deleted while open): nobody else
can reach them, so they live exactly as long as the session holds them. A named file open on a tmpfs (``/tmp`` on
many systems: a workflow reading a 2 GB file there) is the file system's, not the session's, like a file left there
that nobody holds: disk usage of a memory-backed file system, bounded by its size.

The scan never asks a file's own file system anything before it knows it is a shmem one: a descriptor on a dead NFS
server or on a FUSE mount the session serves itself (``unshare -Urm`` is open to runner code) would block a
``stat`` in the kernel, and the monitor thread with it, and then no limit is enforced for any session. So a
descriptor is looked at in this order, each step touching only /proc: ``readlink`` of ``/proc/<pid>/fd/N``
(``d_path``: no file system call) must end in `` (deleted)``; its mount (``mnt_id:`` of ``/proc/<pid>/fdinfo/N``)
must be one of the kernel's internal memfd mounts (learned at start from memfds of our own) or a tmpfs or hugetlbfs
by the process's ``/proc/<pid>/mountinfo``; then the file is pinned (``open(O_PATH)`` of the fd link: no open, no
permission call into the file system) and the pinned file's mount checked again (``/proc/self/fdinfo``) against a
``mountinfo`` read *after* the pin, so a descriptor swapped for one on another file system, or a mount id freed and
reused in between, is never stat'ed; only then ``fstat``. Mount types are not cached across scans (a cached id could
name another mount by then); nothing is cached for a failure (a failed read skips that file in that scan only).

Cost: a ``readlink`` per descriptor, and for each unlinked shmem file a few /proc reads and an ``fstat``, so a scan
is ~100 µs for a runner; 500 idle sessions must not pay that every pass. A process's scan is kept and redone only
when it can have changed something: it used CPU since (allocating shmem takes system time: writing 100 MiB takes
tens of ms) *and* either the machine's shmem (``Shmem`` in ``/proc/meminfo``, read once per pass) moved by
:data:`STEP` since or the pass is exact (record passes and kill decisions: ``held(..., exact=True)``), or it holds
such a file and its RSS moved (it mapped or touched pages of it). Between sampling passes a session can therefore
hold :data:`STEP` plus what it writes until the next record pass unseen; a record pass or a kill decision rescans
every member that used CPU or holds such a file, so a stale figure never kills. What is not counted: files nobody
holds open, named files (above), SysV segments not attached, a tmpfs mount the session detached (``umount -l`` in
its own mount namespace: no ``mountinfo`` lists it, and its type cannot be learned without asking it), hugetlb
memfds of a page size this kernel could not make at start, a process that made itself non-dumpable (its descriptors
cannot be read; its PSS falls back to its RSS), and pages of a held file mapped by a process of the tree that closed
its descriptor (counted twice: over, never under).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from labd.daemon.proctable import Proc, scarce

__all__ = ["ShmemCache", "STEP", "internal_mounts", "shmem_total"]

STEP = 4 << 20  # machine-wide shmem growth that makes processes that used CPU rescan their descriptors
RSS_SLACK = 256 * 1024
SHMEM_TYPES = frozenset({b"tmpfs", b"hugetlbfs"})
DELETED = " (deleted)"
BATCH = 64  # files pinned at once: a process holding thousands must not take as many of the daemon's descriptors

Key = tuple[int, int]  # (st_dev, st_ino) of a file


def shmem_total() -> int:
    """The machine's shmem in bytes (``Shmem:`` of ``/proc/meminfo``); 0 if unreadable."""
    data = _read("/proc/meminfo")
    i = data.find(b"\nShmem:") if data is not None else -1
    return int(data[i + 7:data.index(b"kB", i)]) * 1024 if data is not None and i >= 0 else 0


def _read(path: str) -> bytes | None:
    """A /proc file's contents; None if unreadable (gone, not ours); a :func:`scarce` error is raised."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        if scarce(exc):
            raise
        return None


def mnt_id(fdinfo: str) -> int | None:
    """The ``mnt_id:`` of a ``/proc/<pid>/fdinfo/<fd>`` file (the mount the descriptor's file is on)."""
    data = _read(fdinfo)
    i = data.find(b"\nmnt_id:") if data is not None else -1
    if data is None or i < 0:
        return None
    return int(data[i + 8:data.index(b"\n", i + 8)])


def mount_types(pid: int) -> dict[int, bytes]:
    """Mount id -> file system type in the process's mount namespace (``/proc/<pid>/mountinfo``); {} if
    unreadable."""
    data = _read(f"/proc/{pid}/mountinfo")
    out: dict[int, bytes] = {}
    for line in (data or b"").split(b"\n"):
        head, sep, tail = line.partition(b" - ")  # optional fields end at " - "; paths escape spaces (\040)
        if sep:
            out[int(head.split(b" ", 1)[0])] = tail.split(b" ", 1)[0]
    return out


def internal_mounts() -> frozenset[int]:
    """Mount ids of the kernel's internal mounts memfds live on (no ``mountinfo`` lists them): the shmem one and
    one hugetlbfs mount per huge page size, learned from memfds of our own. These mounts live as long as the
    kernel, so their ids are never reused."""
    sizes = [getattr(os, n) for n in dir(os) if n.startswith("MFD_HUGE_") and n not in ("MFD_HUGE_MASK",
                                                                                         "MFD_HUGE_SHIFT")]
    hugetlb = getattr(os, "MFD_HUGETLB", None)
    flags = [0, *([hugetlb, *(hugetlb | s for s in sizes)] if hugetlb is not None else [])]
    ids: set[int] = set()
    for f in flags:
        try:
            fd = os.memfd_create("labd-mount-probe", f | os.MFD_CLOEXEC)
        except (OSError, AttributeError):  # no such page size here, or no memfd_create
            continue
        try:
            m = mnt_id(f"/proc/self/fdinfo/{fd}")
        finally:
            os.close(fd)
        if m is not None:
            ids.add(m)
    return frozenset(ids)


@dataclass(slots=True)
class _Scan:
    files: dict[Key, int] = field(default_factory=dict)  # file -> allocated bytes
    mapped: dict[Key, int] = field(default_factory=dict)  # file -> PSS of this process's mappings of its pages
    cpu: float = 0.0
    rss: int = 0
    shmem: int = 0  # the machine's shmem when scanned


class ShmemCache:
    """Per process: the unlinked shmem files it holds open, rescanned only when it may have changed them (module
    doc)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[int, int], _Scan] = {}
        self.internal = internal_mounts()
        self.shmem = shmem_total()

    def begin(self) -> None:
        """Read the machine's shmem figure: once per pass (and per quick re-read)."""
        self.shmem = shmem_total()

    def held(self, members: list[Proc], exact: bool = False) -> int:
        """Bytes of shmem files held open by ``members`` beyond what they map (each file once)."""
        size: dict[Key, int] = {}
        mapped: dict[Key, int] = {}
        for p in members:
            s = self._scan_of(p, exact)
            if s is None:
                continue
            for k, n in s.files.items():
                size[k] = max(size.get(k, 0), n)
            for k, n in s.mapped.items():
                mapped[k] = mapped.get(k, 0) + n
        return sum(max(0, n - mapped.get(k, 0)) for k, n in size.items())

    def _scan_of(self, p: Proc, exact: bool) -> _Scan | None:
        if p.zombie:
            return None
        s = self._by_key.get(p.key)
        if s is not None:
            touched = bool(s.files) and abs(p.rss - s.rss) > RSS_SLACK  # mapped or touched pages of a held file
            if not touched and (p.cpu == s.cpu or (not exact and abs(self.shmem - s.shmem) < STEP)):
                return s
        s = _Scan(cpu=p.cpu, rss=p.rss, shmem=self.shmem)
        s.files = self._files(p.pid)
        if s.files:
            s.mapped = _mapped(p.pid, set(s.files))
        self._by_key[p.key] = s
        return s

    def _files(self, pid: int) -> dict[Key, int]:
        """The process's unlinked shmem files (module doc: what is touched, in which order, and why)."""
        base = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(base)
        except OSError as exc:
            if scarce(exc):
                raise
            return {}  # gone, or not readable (non-dumpable)
        found: list[tuple[str, int]] = []  # (fd link, mount id) of unlinked files on a shmem mount
        types: dict[int, bytes] | None = None  # read once, if a file is on a mount that is not internal
        for fd in fds:
            path = f"{base}/{fd}"
            try:
                if not os.readlink(path).endswith(DELETED):
                    continue
            except OSError as exc:
                if scarce(exc):
                    raise
                continue
            m = mnt_id(f"/proc/{pid}/fdinfo/{fd}")
            if m is None:
                continue
            if m not in self.internal:
                types = mount_types(pid) if types is None else types
                if types.get(m) not in SHMEM_TYPES:
                    continue  # never pinned: even an O_PATH open may revalidate an NFS file with its server
            found.append((path, m))
        out: dict[Key, int] = {}
        for i in range(0, len(found), BATCH):
            self._stat_pinned(pid, found[i:i + BATCH], out)
        return out

    def _stat_pinned(self, pid: int, found: list[tuple[str, int]], out: dict[Key, int]) -> None:
        """Pin ``found``'s files, check each is still on the mount it was found on and that mount is a shmem one
        (by a ``mountinfo`` read after the pin), and put the unlinked ones' allocated bytes in ``out``."""
        pins: list[tuple[int, int]] = []  # (our O_PATH descriptor, its mount id)
        try:
            for path, m in found:
                try:
                    pin = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError as exc:
                    if scarce(exc):
                        raise
                    continue  # closed meanwhile
                pins.append((pin, -1))
                now = mnt_id(f"/proc/self/fdinfo/{pin}")
                if now == m:  # else the descriptor now names another file: left to the next scan
                    pins[-1] = (pin, m)
            types = mount_types(pid) if any(m >= 0 and m not in self.internal for _, m in pins) else {}
            for pin, m in pins:
                if m < 0 or (m not in self.internal and types.get(m) not in SHMEM_TYPES):
                    continue
                st = os.fstat(pin)
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 0 and st.st_blocks:
                    out[(st.st_dev, st.st_ino)] = st.st_blocks * 512
        finally:
            for pin, _ in pins:
                os.close(pin)

    def prune(self, alive: dict[int, Proc]) -> None:
        for key in [k for k in self._by_key if alive.get(k[0]) is None or alive[k[0]].start != k[1]]:
            del self._by_key[key]


def _mapped(pid: int, files: set[Key]) -> dict[Key, int]:
    """What the process's mappings of ``files`` hold of the files' pages (``/proc/<pid>/smaps``), by file: per
    mapping ``Pss - Anonymous`` (a private mapping's written pages are anonymous copies, not the file's)."""
    data = _read(f"/proc/{pid}/smaps")
    out: dict[Key, int] = {}
    current: Key | None = None
    pss = anon = 0

    def close() -> None:
        if current is not None:
            out[current] = out.get(current, 0) + max(0, pss - anon)

    for line in (data or b"").split(b"\n"):
        if not line:
            continue
        head = line.split(None, 5)
        if len(head) >= 5 and not head[0].endswith(b":") and b"-" in head[0]:  # a mapping's header line
            close()
            major, minor = head[3].split(b":")
            k = (os.makedev(int(major, 16), int(minor, 16)), int(head[4]))
            current, pss, anon = (k if k in files else None), 0, 0
        elif current is not None and line.startswith(b"Pss:"):
            pss = int(line[4:].split()[0]) * 1024
        elif current is not None and line.startswith(b"Anonymous:"):
            anon = int(line[10:].split()[0]) * 1024
    close()
    return out
