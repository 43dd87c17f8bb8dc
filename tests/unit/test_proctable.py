"""The process table pass: trees from one read of /proc, proportional memory, the session marker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labd.daemon.proctable import MarkerCache, ProcTable, PssCache, read_proc
from tests.conftest import wait_until


def test_tree_holds_a_child_and_its_grandchild() -> None:
    """One scan finds a process's descendants through the parent -> children map."""
    child = subprocess.Popen([sys.executable, "-c", "import subprocess; subprocess.run(['sleep', '30'])"])
    try:
        table = ProcTable()
        for _ in range(200):
            table.scan()
            tree = table.tree([child.pid])
            if len(tree) == 2:
                break
        assert [p.pid for p in tree][0] == child.pid
        assert len(tree) == 2 and tree[1].ppid == child.pid
        assert table.tree([os.getpid()])[0].pid == os.getpid()
    finally:
        child.kill()
        child.wait()


def test_pss_counts_shared_pages_by_their_share() -> None:
    """A forked child shares its parent's pages: its PSS is well under its RSS."""
    me = read_proc(os.getpid())
    assert me is not None and me.rss > 0 and me.cpu > 0
    if not PssCache().available:  # say so rather than pass without checking anything
        pytest.skip("smaps_rollup is not readable here: PSS cannot be measured")
    child = os.fork()
    if child == 0:
        import time

        time.sleep(5)
        os._exit(0)
    try:
        p = read_proc(child)
        assert p is not None
        assert 0 < PssCache().exact(p) < p.rss
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


def test_marker_names_the_session_from_the_inherited_environment() -> None:
    """A process started with LABD_SESSION_ID in its environment is recognised as the session's."""
    child = subprocess.Popen(["sleep", "30"], env={**os.environ, "LABD_SESSION_ID": "abc123"})
    try:
        # /proc/<pid>/environ is the parent's copy until the child has exec'd `sleep`
        wait_until(lambda: Path(f"/proc/{child.pid}/comm").read_text().strip() == "sleep", timeout=10,
                   what="child exec'd")
        p = read_proc(child.pid)
        assert p is not None
        assert MarkerCache().session_of(p) == "abc123"
        me = read_proc(os.getpid())
        assert me is not None and MarkerCache().session_of(me) == os.environ.get("LABD_SESSION_ID")
    finally:
        child.kill()
        child.wait()
