"""One SDK :class:`~labd.ipc.Client` shared by several threads: their requests take turns on its connection.
Before, two threads' requests at once aborted the whole Python process inside libzmq (``Assertion failed:
pfd.revents & POLLIN``, exit 134), the first thing a script with a thread pool ran into (power-user review)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

SCRIPT = r"""
import sys
from concurrent.futures import ThreadPoolExecutor
from labd.ipc import Client

with Client(sys.argv[1], timeout=60) as c:
    def one(i):
        sid = c.start("demo.count", params={"n": 2, "delay": 0})
        for _ in range(20):
            c.session(sid)
            c.sessions(limit=5)
        return c.wait(sid, timeout=90)["status"]

    with ThreadPoolExecutor(8) as pool:
        print(sorted(set(pool.map(one, range(16)))))
"""


def test_threads_sharing_one_client_take_turns(daemon, tmp_path: Path) -> None:
    """16 sessions started, read and waited for by 8 threads through one client: the process ends normally and
    every session completed (run in a child process: the abort took the whole interpreter with it)."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(daemon.home)], capture_output=True, text=True,
                         timeout=170)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.strip() == "['completed']", out.stdout
