"""Memory a session holds in shmem files it has open but has not mapped: ``memfd_create`` files, tmpfs files.

PSS counts only mapped pages. A page written into a memfd or a tmpfs file with ``write`` (or ``fallocate``) and
never mapped is in no process's page tables, yet it is memory the kernel cannot reclaim while the file lives (an
attack review held 600 MiB under a 200 MiB limit). :class:`ShmemCache` finds such files through each process's
descriptors (``/proc/<pid>/fd``: a regular file on a tmpfs or hugetlbfs file system, which memfds are) and counts
their allocated size (``st_blocks``), once per file in a tree (by device and inode), minus the pages of the same
file the tree maps (their PSS, from ``/proc/<pid>/smaps``, read only for processes that hold such a file), which
PSS counts already. A file both open and mapped thus counts once: its mapped pages by PSS, the rest here.

Cost: one ``stat`` per descriptor, a ``statfs`` per new device, so a scan is ~100 µs for a runner; 500 idle
sessions must not pay that every pass. A process's scan is kept and redone only when it can have changed
something: it used CPU since (allocating shmem takes system time: writing 100 MiB takes tens of ms) *and* the
machine's shmem (``Shmem`` in ``/proc/meminfo``, read once per pass) moved by :data:`STEP` since, or it holds
such a file and its RSS moved (it mapped or touched pages of it). Between passes a session can therefore hold
:data:`STEP` plus what it writes in one pass period unseen; a kill decision rescans every member that used CPU
or holds such a file, so a stale figure never kills. What is not counted: files left on a tmpfs with no process
holding them open (disk usage of a memory-backed file system, bounded by its size), SysV segments not attached,
a process that made itself non-dumpable (its descriptors cannot be read; its PSS falls back to its RSS), and
pages of a held file mapped by a process of the tree that closed its descriptor (counted twice: over, never under).
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass, field

from labd.daemon.proctable import Proc, scarce

__all__ = ["ShmemCache", "STEP", "shmem_total"]

STEP = 4 << 20  # machine-wide shmem growth that makes processes that used CPU rescan their descriptors
RSS_SLACK = 256 * 1024
_TMPFS_MAGIC, _HUGETLBFS_MAGIC = 0x01021994, 0x958458F6
_libc = ctypes.CDLL(None, use_errno=True)

Key = tuple[int, int]  # (st_dev, st_ino) of a file


def shmem_total() -> int:
    """The machine's shmem in bytes (``Shmem:`` of ``/proc/meminfo``); 0 if unreadable."""
    try:
        with open("/proc/meminfo", "rb") as f:
            data = f.read()
    except OSError as exc:
        if scarce(exc):
            raise
        return 0
    i = data.find(b"\nShmem:")
    return int(data[i + 7:data.index(b"kB", i)]) * 1024 if i >= 0 else 0


def _fs_type(path: str) -> int | None:
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type first
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return int.from_bytes(buf.raw[:ctypes.sizeof(ctypes.c_long)], "little", signed=True) & 0xFFFFFFFF


@dataclass(slots=True)
class _Scan:
    files: dict[Key, int] = field(default_factory=dict)  # file -> allocated bytes
    mapped: dict[Key, int] = field(default_factory=dict)  # file -> PSS of this process's mappings of it
    cpu: float = 0.0
    rss: int = 0
    shmem: int = 0  # the machine's shmem when scanned


class ShmemCache:
    """Per process: the shmem files it holds open, rescanned only when it may have changed them (module doc)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[int, int], _Scan] = {}
        self._shmem_devs: dict[int, bool] = {}  # st_dev -> on a tmpfs/hugetlbfs (dropped in prune: devs recycle)
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
        base = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(base)
        except OSError as exc:
            if scarce(exc):
                raise
            return {}  # gone, or not readable (non-dumpable)
        out: dict[Key, int] = {}
        for fd in fds:
            path = f"{base}/{fd}"
            try:
                st = os.stat(path)
            except OSError as exc:
                if scarce(exc):
                    raise
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_blocks == 0:
                continue
            shm = self._shmem_devs.get(st.st_dev)
            if shm is None:
                shm = self._shmem_devs[st.st_dev] = _fs_type(path) in (_TMPFS_MAGIC, _HUGETLBFS_MAGIC)
            if shm:
                out[(st.st_dev, st.st_ino)] = st.st_blocks * 512
        return out

    def prune(self, alive: dict[int, Proc]) -> None:
        for key in [k for k in self._by_key if alive.get(k[0]) is None or alive[k[0]].start != k[1]]:
            del self._by_key[key]
        self._shmem_devs.clear()


def _mapped(pid: int, files: set[Key]) -> dict[Key, int]:
    """PSS of the process's mappings of ``files`` (``/proc/<pid>/smaps``), by file."""
    try:
        with open(f"/proc/{pid}/smaps", "rb") as f:
            data = f.read()
    except OSError as exc:
        if scarce(exc):
            raise
        return {}
    out: dict[Key, int] = {}
    current: Key | None = None
    for line in data.split(b"\n"):
        if not line:
            continue
        head = line.split(None, 5)
        if len(head) >= 5 and not head[0].endswith(b":") and b"-" in head[0]:  # a mapping's header line
            major, minor = head[3].split(b":")
            k = (os.makedev(int(major, 16), int(minor, 16)), int(head[4]))
            current = k if k in files else None
        elif current is not None and line.startswith(b"Pss:"):
            out[current] = out.get(current, 0) + int(line[4:].split()[0]) * 1024
    return out
