"""Memory held in shmem files (daemon/shmem.py): a memfd written and never mapped counts, a mapped one counts
once (its pages are PSS already), a file held by two processes of a tree counts once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
