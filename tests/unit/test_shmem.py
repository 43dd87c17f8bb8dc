"""Memory held in shmem files (daemon/shmem.py): a memfd written and never mapped counts, a mapped one counts
once (its pages are PSS already), a file held by two processes of a tree counts once, a privately mapped one is not
hidden by its copy-on-write pages, a named tmpfs file counts only once unlinked, and no file system but a shmem one
is ever asked for a file's status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labd.daemon.proctable import read_proc
from labd.daemon.shmem import ShmemCache

HOLDER = r'''
import mmap, os, sys, time
fd = os.memfd_create("unmapped")
for _ in range(40):
    os.write(fd, b"\1" * (1 << 20))
mapped = os.memfd_create("mapped")
os.ftruncate(mapped, 30 << 20)
m = mmap.mmap(mapped, 30 << 20)
m[:] = b"\2" * (30 << 20)
if os.fork() == 0:  # the child holds the same two files (inherited descriptors and mapping)
    time.sleep(60)
    os._exit(0)
print("ready", flush=True)
time.sleep(60)
'''


def test_unmapped_memfd_counts_once_and_mapped_pages_are_left_to_pss() -> None:
    """40 MiB written into a memfd and 30 MiB in a mapped one, both held by a parent and its child: 40 MiB held
    beyond what is mapped, whether one or both processes are asked."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        child = int(Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()[0])
        members = [read_proc(p.pid), read_proc(child)]
        assert all(members)
        cache = ShmemCache()
        assert cache.held([members[0]]) == 40 << 20
        assert cache.held(members) == 40 << 20  # (dev, inode) once; the mapped file's pages are each one's PSS
        assert cache.held(members, exact=True) == 40 << 20
    finally:
        p.kill()
        p.wait()


def _holder(code: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def _end(p: subprocess.Popen[str]) -> None:
    p.kill()
    p.wait()


PRIVATE_COW = r'''
import mmap, os, time
fd = os.memfd_create("cow")
for _ in range(40):
    os.write(fd, b"\1" * (1 << 20))
m = mmap.mmap(fd, 40 << 20, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
for i in range(0, 40 << 20, 4096):
    m[i] = 2  # each page copied on write: anonymous memory PSS counts, the memfd's pages stay unmapped
print("ready", flush=True)
time.sleep(60)
'''


def test_private_mapping_written_hides_none_of_the_file() -> None:
    """A 40 MiB memfd mapped MAP_PRIVATE and written all over: the mapping's PSS is anonymous copies, not the
    file's pages, so all 40 MiB of the file still count as held (the whole PSS was subtracted: 0)."""
    p = _holder(PRIVATE_COW)
    try:
        proc = read_proc(p.pid)
        assert proc is not None
        assert ShmemCache().held([proc], exact=True) == 40 << 20
    finally:
        _end(p)


NAMED = r'''
import os, sys, time
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(b"\1" * (20 << 20))
fd = os.open(path, os.O_RDONLY)
print("ready", flush=True)
sys.stdin.readline()
os.unlink(path)
print("unlinked", flush=True)
time.sleep(60)
'''


def test_named_tmpfs_file_counts_only_once_unlinked() -> None:
    """A 20 MiB file on a tmpfs (/dev/shm) held open under its name is the file system's, not the session's:
    0 held; once unlinked (only the session keeps it) its 20 MiB count."""
    path = Path(f"/dev/shm/labd-test-named-{os.getpid()}")
    p = subprocess.Popen([sys.executable, "-c", NAMED, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout is not None and p.stdin is not None and p.stdout.readline().strip() == "ready"
        cache = ShmemCache()
        proc = read_proc(p.pid)
        assert proc is not None
        assert cache.held([proc], exact=True) == 0
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "unlinked"
        proc = read_proc(p.pid)
        assert proc is not None
        proc.cpu += 1.0  # it used CPU since the last scan (ticks may not have moved): rescanned
        assert cache.held([proc], exact=True) == 20 << 20
    finally:
        _end(p)
        path.unlink(missing_ok=True)


ON_DISK = r'''
import os, sys, time
named = open(sys.argv[1] + "/named", "wb")
named.write(b"\1" * 65536)
gone = open(sys.argv[1] + "/gone", "wb")
gone.write(b"\1" * 65536)
os.unlink(sys.argv[1] + "/gone")
fd = os.memfd_create("m")
os.write(fd, b"\1" * (1 << 20))
print("ready", flush=True)
time.sleep(60)
'''


def test_only_files_on_a_shmem_mount_are_ever_stated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stat of a descriptor's file asks its file system (a dead NFS server or a session's own FUSE mount never
    answers, and the monitor would hang): of a process holding a named and a deleted file on a disk file system and
    a memfd, only the memfd is stat'ed (once, through its pinned descriptor) and counted."""
    if _fs_type(tmp_path) in ("tmpfs", "hugetlbfs"):
        pytest.skip("the test's directory is on a tmpfs")
    p = subprocess.Popen([sys.executable, "-c", ON_DISK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        proc = read_proc(p.pid)
        assert proc is not None
        cache = ShmemCache()
        stated: list[object] = []
        real_stat, real_fstat = os.stat, os.fstat
        monkeypatch.setattr(os, "stat", lambda *a, **k: stated.append(a[0]) or real_stat(*a, **k))
        monkeypatch.setattr(os, "fstat", lambda fd: stated.append(os.readlink(f"/proc/self/fd/{fd}"))
                            or real_fstat(fd))
        held = cache.held([proc], exact=True)
        monkeypatch.undo()
        assert held == 1 << 20
        assert len(stated) == 1 and str(stated[0]).startswith("/memfd:m"), stated
    finally:
        _end(p)


def _fs_type(path: Path) -> str:
    """The type of the file system ``path`` is on (the longest mount point above it in our mountinfo)."""
    best, kind = "", ""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        head, _, tail = line.partition(" - ")
        point = head.split()[4].replace("\\040", " ")
        if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best):
            best, kind = point, tail.split()[0]
    return kind


def test_a_descriptor_now_on_another_mount_is_not_stated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A descriptor found naming a file on a memfd mount but, once pinned, one on another file system (the process
    swapped it between the checks, e.g. for a file on its own FUSE mount) is left alone: no fstat, nothing counted."""
    p = subprocess.Popen([sys.executable, "-c", ON_DISK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        cache = ShmemCache()
        assert cache.internal
        fd = next(n for n in os.listdir(f"/proc/{p.pid}/fd") if os.readlink(f"/proc/{p.pid}/fd/{n}").endswith("/named"))
        stated: list[int] = []
        real_fstat = os.fstat
        monkeypatch.setattr(os, "fstat", lambda f: stated.append(f) or real_fstat(f))
        out: dict[tuple[int, int], int] = {}
        cache._stat_pinned(p.pid, [(f"/proc/{p.pid}/fd/{fd}", min(cache.internal))], out)  # as found before
        monkeypatch.undo()
        assert out == {} and stated == []
    finally:
        _end(p)
