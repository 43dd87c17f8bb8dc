"""A full disk under the daemon's log: logging never takes the daemon down; a replay or branch whose seed cannot be
written is refused ``io_error`` and leaves nothing behind; a session started while the disk is full waits in the queue
and runs once there is room (a real full disk: a small tmpfs, where the tests run as root).

``serve --detach`` writes the daemon's log to ``<home>/daemon.log``; when that disk filled up, the ingest thread's
"store unavailable" line failed to write, then the main loop's report of that failure, and the daemon exited. Here
the daemon's stdout and stderr are ``/dev/full`` (every write fails with ENOSPC) for its whole life."""

from __future__ import annotations

import io
import os
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from labd.daemon.logsetup import LossyStream
from labd.ipc.client import Client, LabdError
from tests.conftest import kill_runners, running_daemon, wait_until

pytestmark = pytest.mark.fault


def test_a_daemon_whose_log_cannot_be_written_serves_sessions_to_the_end(isolated_env: Path) -> None:
    """With every log write failing, the daemon starts, runs a session that prints and emits to completion, answers
    status, and stops cleanly on SIGTERM (exit 0)."""
    with open("/dev/full", "wb") as full:
        proc = subprocess.Popen([sys.executable, "-m", "labd", "--home", str(isolated_env), "serve",
                                 "--log-format", "json", "--log-level", "debug"], stdout=full, stderr=full)
    try:
        def ready() -> bool:
            assert proc.poll() is None, f"the daemon exited ({proc.returncode}) on a failed log write"
            try:
                with Client(isolated_env, timeout=2) as c:
                    return bool(c.status())
            except Exception:  # noqa: BLE001 - not up yet
                return False
        wait_until(ready, timeout=60, what="daemon ready")
        with Client(isolated_env) as c:
            sid = c.start("labd_testflows:ticker", params={"n": 20, "delay": 0.01})
            assert c.wait(sid, timeout=60)["status"] == "completed"
            ticks = [e for e in c.history(sid) if e["kind"] == "custom"]
            assert len(ticks) == 20
            assert proc.poll() is None
        proc.terminate()  # what `labd shutdown` and systemd send
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_runners(isolated_env)


def test_the_log_stream_drops_failed_writes_and_says_so_once_it_can() -> None:
    """A write that raises (ENOSPC, a closed stream) returns 0 and is counted; the next write that succeeds is
    preceded, on a line of its own, by how many were dropped."""
    class Flaky(io.StringIO):
        failing = True

        def write(self, s: str) -> int:
            if self.failing:
                raise OSError(28, "No space left on device")
            return super().write(s)

    sink = Flaky()
    log = LossyStream(sink)
    assert log.write("one\n") == 0 and log.write("two\n") == 0
    log.flush()
    assert log.dropped == 2
    sink.failing = False
    log.write("three\n")
    lines = sink.getvalue().splitlines()
    assert lines[0] == "" and "2 log writes failed" in lines[1] and lines[2] == "three"
    assert log.dropped == 0


@contextmanager
def _no_file_grows(pid: int) -> Iterator[None]:
    """While the block runs, process ``pid`` can make no file larger than 1 byte: its soft ``RLIMIT_FSIZE`` is 1 (a
    write past it fails with EFBIG, Python ignoring SIGXFSZ; ENOSPC on a full disk takes the same path, and a real
    full disk needs root to mount). The soft limit is restored after."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.timeout(240)
def test_a_replay_or_branch_the_disk_cannot_hold_is_io_error_and_leaves_nothing(daemon) -> None:
    """With the daemon unable to write a file, `labd replay` and `labd branch` are refused ``io_error`` naming the
    seed file; no session is recorded and no session directory is left; the daemon serves on, and with room again
    the replay runs to completion. A replay was ``internal error: [Errno 28] No space left on device`` (a traceback
    in the log) and left a directory holding an empty ``replay.tmp`` until the next daemon start."""
    assert daemon.proc is not None
    with daemon.client() as c:
        sid = c.start("planning_and_control", params={"task": "Fit the data"})
        assert c.wait(sid, timeout=120)["status"] == "completed"
        step = next(n["node_id"] for n in c.dag(sid)["dag"]["nodes"] if n["name"].startswith("step 2"))
        before = {s["id"] for s in c.sessions(limit=1000)}
        dirs = set(os.listdir(daemon.home / "sessions"))
        with _no_file_grows(daemon.proc.pid):
            for ask in (lambda: c.replay(sid), lambda: c.branch(sid, step, hypothesis="the input is in Kelvin")):
                with pytest.raises(LabdError) as err:
                    ask()
                assert err.value.code == "io_error", err.value
                assert "could not write" in err.value.message and ".json" in err.value.message, err.value
        assert daemon.proc.poll() is None
        assert {s["id"] for s in c.sessions(limit=1000)} == before
        assert set(os.listdir(daemon.home / "sessions")) == dirs
        again = c.replay(sid)
        assert c.wait(again, timeout=120)["status"] == "completed"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs mounted for the test (root only: skipped otherwise), unmounted after."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file (returned: remove it to make room again)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: each write reaches the disk or fails, none at close
        for size in (1 << 20, 4096, 1):
            try:
                while f.write(b"\0" * size):
                    pass
            except OSError:
                pass
    return filler


@pytest.mark.timeout(240)
def test_a_session_started_on_a_full_disk_waits_and_runs_once_there_is_room(small_disk: Path, isolated_env: Path
                                                                            ) -> None:
    """On a full disk a new session's launch fails (ENOSPC: its directory, key, spool): it waits in the run queue,
    shown ``queued``, and runs to completion once room is made. A session that found the queue empty was dropped
    instead: ``created`` for good (``labd run --wait`` never returned), even after the disk had room again."""
    home = small_disk / "home"
    with running_daemon(home) as d, d.client() as c:
        first = c.start("demo.count", params={"n": 2})
        assert c.wait(first, timeout=60)["status"] == "completed"
        filler = _fill(small_disk)
        sid = c.start("demo.count", params={"n": 2})
        wait_until(lambda: c.session(sid)["status"] == "queued", timeout=30, what="the session queued for room")
        filler.unlink()
        row = c.wait(sid, timeout=60)
        assert row["status"] == "completed", row


@pytest.mark.timeout(240)
def test_deleting_sessions_on_a_full_disk_is_refused_in_one_line_then_works(small_disk: Path, isolated_env: Path
                                                                           ) -> None:
    """`labd rm` / `labd prune` on a full disk (SQLite needs room to delete) is refused `store_error` with a one-line
    message that says the disk is full: it was SQLAlchemy's text of several lines, with the SQL statement and its
    parameters. Nothing is deleted; once there is room the same delete works."""
    home = small_disk / "home"
    with running_daemon(home) as d, d.client() as c:
        sid = c.start("demo.count", params={"n": 2})
        assert c.wait(sid, timeout=60)["status"] == "completed"
        with sqlite3.connect(home / "labd.db") as db:  # an empty WAL: the delete must grow it
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        filler = _fill(small_disk)
        try:
            with pytest.raises(LabdError) as refused:
                c.prune("0s")
        finally:
            filler.unlink()
        assert refused.value.code == "store_error"
        assert "\n" not in refused.value.message and "SQL" not in refused.value.message, refused.value.message
        assert "disk is full" in refused.value.message, refused.value.message
        assert c.session(sid)["status"] == "completed"
        c.rm(sid)
        with pytest.raises(LabdError):
            c.session(sid)


@pytest.mark.timeout(240)
def test_a_session_started_on_a_nearly_full_disk_waits_and_runs_once_there_is_room(small_disk: Path,
                                                                                  isolated_env: Path) -> None:
    """With room for a session's directory and key but not for its runner's event spool (under 1 MiB free), the
    session waits ``queued`` and runs once there is room, as on a full disk. It was launched and failed at once: the
    runner's spool reservation raised ENOSPC (a traceback as the session's reason). No spare runner, whose spool is
    made ahead: the path where the runner makes its own."""
    home = small_disk / "home"
    with running_daemon(home, extra_env={"LABD_SPARE_RUNNERS": "0"}) as d, d.client() as c:
        first = c.start("demo.count", params={"n": 2})
        assert c.wait(first, timeout=60)["status"] == "completed"
        filler = _fill(small_disk)
        os.truncate(filler, filler.stat().st_size - (256 << 10))  # a quarter of a spool's first segment free
        sid = c.start("demo.count", params={"n": 2})
        wait_until(lambda: c.session(sid)["status"] in ("queued", "failed"), timeout=30, what="queued or failed")
        assert c.session(sid)["status"] == "queued", c.session(sid)
        assert c.status()["disk"]["low"] is True  # `labd status` says why: disk ... (full: new sessions wait)
        filler.unlink()
        row = c.wait(sid, timeout=60)
        assert row["status"] == "completed", row


@pytest.mark.timeout(240)
def test_a_file_deleted_beside_the_home_frees_its_space_once_the_idle_spare_is_renewed(small_disk: Path,
                                                                                      isolated_env: Path) -> None:
    """The spare runner and the pre-forked workflow checker prepare Landlock rules that grant, one by one, the entries
    beside labd's home, and so hold each file there: a file deleted beside the home kept its space for as long as the
    daemon ran, even with no session running (an admin's review: `rm` on a full disk freed nothing). An unused spare
    and checker are now replaced every ``RENEW_S`` (5 min; 3 s here through ``LABD_SPARE_RENEW_S``), and the file's
    space comes back."""
    from tests.integration.test_start_spare import spares

    big = small_disk / "big"
    big.write_bytes(b"\1" * (24 << 20))
    home = small_disk / "home"

    def free() -> int:
        st = os.statvfs(small_disk)
        return st.f_bfree * st.f_frsize

    with running_daemon(home, extra_env={"LABD_SPARE_RENEW_S": "3"}) as d, d.client() as c:
        template = c.status()["template_pid"]
        first = wait_until(lambda: (s := spares(template)) and s[0], timeout=30, what="a spare runner")
        before = free()
        big.unlink()
        wait_until(lambda: free() >= before + (20 << 20), timeout=60, what="the deleted file's space given back")
        wait_until(lambda: (s := spares(template)) and s[0].pid != first.pid, timeout=30, what="a new spare ready")


@pytest.mark.timeout(240)
def test_a_file_deleted_beside_the_home_on_a_full_disk_lets_the_waiting_session_start(small_disk: Path,
                                                                                     isolated_env: Path) -> None:
    """On a full disk, deleting a file beside labd's home that the spare runner and the checker had held open since
    they were forked (their Landlock rules grant it) makes room within a retry or two: each launch that finds the disk
    full has the template renew them. Before, the space came back only when they were next renewed anyway, up to 5
    minutes later, and the waiting session waited that long (an admin's review: 4.5 minutes)."""
    big = small_disk / "big"
    big.write_bytes(b"\1" * (16 << 20))  # before the daemon: its spare and checker hold it from their start
    home = small_disk / "home"
    with running_daemon(home) as d, d.client() as c:
        first = c.start("demo.count", params={"n": 2})
        assert c.wait(first, timeout=60)["status"] == "completed"
        filler = _fill(small_disk)  # made after them: not held
        try:
            sid = c.start("demo.count", params={"n": 2})
            wait_until(lambda: c.session(sid)["status"] == "queued", timeout=30, what="the session queued for room")
            big.unlink()
            row = c.wait(sid, timeout=60)  # the default renewal (5 minutes) is far past this
            assert row["status"] == "completed", row
        finally:
            filler.unlink()
