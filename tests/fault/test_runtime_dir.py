"""The daemon's runtime directory removed under it (``systemd-tmpfiles`` cleaning ``/tmp``, ``/run/user/UID`` removed
when a user's last login ends without lingering): its sockets and connection file are gone, so no client can reach it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labd.ipc.paths import layout_for
from tests.conftest import DaemonProc, alive, next_daemon_adopts_and_stops, running_daemon, wait_until

pytestmark = pytest.mark.fault


@pytest.mark.timeout(240)
def test_a_daemon_whose_runtime_dir_was_removed_exits_and_the_next_adopts_its_sessions(daemon: DaemonProc) -> None:
    """With its runtime directory removed, the daemon logs why and exits 1 (a service manager restarts it) instead of
    serving on unreachable: clients said no daemon ran, and a new `labd serve` was refused as another daemon held the
    home. The session keeps running, and the next daemon binds a new runtime directory and adopts it."""
    with daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 120})
        pid = wait_until(lambda: c.session(sid)["status"] == "running" and c.session(sid)["pid"])
    shutil.rmtree(layout_for(daemon.home).runtime_dir)
    assert daemon.proc is not None
    assert daemon.proc.wait(60) == 1
    assert "runtime directory" in daemon.log() and "Traceback" not in daemon.log()
    assert alive(pid)
    next_daemon_adopts_and_stops(daemon.home, sid, pid)


def test_a_client_with_another_runtime_dir_is_told_a_daemon_serves_the_home(daemon: DaemonProc, tmp_path: Path
                                                                           ) -> None:
    """A client whose XDG_RUNTIME_DIR differs from the daemon's (a systemd service has /run/user/UID; cron, `su` and
    `sudo -u` have none) finds no connection file: it is told that the daemon (its pid) serves the home from another
    runtime directory, not "no labd daemon is running ... start one with `labd serve`", which then refused to start a
    second daemon on the home."""
    assert daemon.proc is not None
    other = tmp_path / "other-run"
    other.mkdir(mode=0o700)
    r = subprocess.run([sys.executable, "-m", "labd", "ps"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "XDG_RUNTIME_DIR": str(other)})
    assert r.returncode == 2 and "[no_daemon]" in r.stderr, r.stderr
    assert f"(pid {daemon.proc.pid}) cannot be reached from here" in r.stderr and "XDG_RUNTIME_DIR" in r.stderr
    assert "start one with `labd serve`" not in r.stderr


@pytest.mark.timeout(120)
def test_the_daemon_keeps_its_runtime_dir_recent_for_age_based_cleaners(isolated_env: Path) -> None:
    """The daemon touches its runtime directory and every entry in it (sockets, connection file) every hour (2 s here:
    LABD_RUNTIME_TOUCH_S), so that an age-based cleaner of /tmp (systemd-tmpfiles: 10 days) does not remove them
    from under a daemon that runs for weeks: entries made a year old become recent again, and the daemon serves."""
    with running_daemon(isolated_env, extra_env={"LABD_RUNTIME_TOUCH_S": "2"}) as d:
        runtime = layout_for(d.home).runtime_dir
        entries = [runtime, *runtime.iterdir()]
        assert {p.name for p in entries} >= {"connection.json", "control.sock", "events.sock", "runners.sock"}
        old = time.time() - 365 * 86400
        for p in entries:
            os.utime(p, (old, old), follow_symlinks=False)
        wait_until(lambda: all(p.lstat().st_mtime > old + 86400 for p in entries), timeout=60,
                   what="the runtime directory's entries touched")
        with d.client() as c:
            assert c.ping()


def test_a_client_meeting_a_stopping_daemon_is_told_so(daemon: DaemonProc) -> None:
    """While the daemon has no connection file in the client's own runtime directory (it removes it first thing as
    it stops, and writes it last as it starts; here removed under it), a client is told that the daemon (its pid) is
    starting or stopping, not that it was started with another runtime directory (said while a daemon took its time
    to stop, with the same XDG_RUNTIME_DIR)."""
    from labd.ipc.paths import layout_for

    assert daemon.proc is not None
    layout_for(str(daemon.home)).connection_file.unlink()
    r = subprocess.run([sys.executable, "-m", "labd", "--home", str(daemon.home), "ps"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "[no_daemon]" in r.stderr, r.stderr
    assert f"(pid {daemon.proc.pid}) is starting or stopping" in r.stderr, r.stderr
    assert "another runtime directory" not in r.stderr
