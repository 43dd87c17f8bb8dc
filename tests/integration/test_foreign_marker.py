"""Processes of another local user are never counted as a session's, whatever their environment says."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time

import pytest

from labd.ipc.client import LabdError
from tests.conftest import wait_until
from tests.integration.test_ownership import other_user  # noqa: F401 - the fixture

_HOG = """\
import sys, time
x = bytearray(300 << 20)
for i in range(0, len(x), 4096):
    x[i] = 1
print("held", flush=True)
time.sleep(60)
"""


def test_another_users_process_naming_a_session_does_not_count_against_it(daemon, other_user) -> None:  # noqa: F811
    """Another local user starts a process with ``LABD_SESSION_ID=<a running session's id>`` in its environment (the
    id is in every runner's process title, which `ps` shows to all) holding 300 MiB. The session, under a 150 MiB
    limit, runs on, and the process is not killed. Before, a daemon that can read every process's environment (run
    as root) counted it as the session's (the marker left-behind children carry): the session was killed for its
    memory limit, by another user."""
    uid, gid = other_user
    python = shutil.which("python3", path="/usr/bin:/bin")  # the venv's may sit in a directory only we can read
    if python is None:
        print("SKIPPED: no system python3 for the other user")
        pytest.skip("no system python3 for the other user")
    with daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 120}, memory="150M")
        wait_until(lambda: c.session(sid)["status"] == "running", timeout=30, what="running")
        hog = subprocess.Popen([python, "-I", "-c", _HOG], user=uid, group=gid, extra_groups=[],
                               env={"LABD_SESSION_ID": sid}, stdout=subprocess.PIPE, cwd="/")
        try:
            assert hog.stdout is not None
            if hog.stdout.readline() != b"held\n":
                row = c.session(sid)
                raise AssertionError(f"the other user's process was killed; the session is {row['status']} "
                                     f"({row.get('reason')})")
            deadline = time.monotonic() + 3  # 30 passes of the monitor (0.1 s apart under a memory limit)
            while time.monotonic() < deadline:
                row = c.session(sid)
                assert row["status"] == "running", row.get("reason")
                assert hog.poll() is None, "the other user's process was killed"
                time.sleep(0.1)
        finally:
            hog.kill()
            hog.wait(10)
            with contextlib.suppress(LabdError):  # not running any more: the failure above says why
                c.kill(sid)
