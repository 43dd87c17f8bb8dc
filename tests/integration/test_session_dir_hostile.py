"""A session's directory (``<home>/sessions/<id>``: its spool, checkpoint objects, seed) is writable by its runner,
i.e. by the workflow's own code, which is trusted with its own session only. What the daemon reads or writes
there (a spool, a resume's seed) must neither hang it nor reach outside the session."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from labd.ipc.client import LabdError
from tests.conftest import wait_until


def _failed_with(c, sid: str, marker: str) -> None:
    final = c.wait(sid, timeout=60)
    assert final["status"] == "failed", final
    assert marker in final.get("reason", ""), final


def test_a_resume_of_a_session_whose_objects_are_fifos_is_refused_and_reads_go_on(shared_daemon) -> None:
    """A workflow puts FIFOs in place of its checkpoint objects (result and manifest) and fails. ``labd resume`` of
    it (twice: more sessions than the daemon's read workers) is refused at once (``no_checkpoint``), and the long
    reads go on working (a comparison answers). Before, the daemon's read worker opened the FIFO and blocked for
    good: the resume never answered, and two such resumes left no worker for any later resume, branch, compare or
    replay."""
    from labd.ipc.client import LabdError

    with shared_daemon.client(timeout=30) as c:
        sids = [c.start("labd_testflows:fifo_objects") for _ in range(3)]
        for sid in sids:
            _failed_with(c, sid, "fail, to be resumed")
            assert "swapped 2" in "".join(e["payload"]["text"] for e in c.history(sid, kinds=["output"]))
        for sid in sids:
            t0 = time.monotonic()
            try:
                c.resume(sid)
            except LabdError as exc:
                assert exc.code == "no_checkpoint", exc
            else:
                raise AssertionError("a resume from FIFOs was accepted")
            assert time.monotonic() - t0 < 10
        row = next(r for r in c.compare(sids[0], sids[1])["files"] if r["path"] == "a.txt")
        assert row["states"] == ["same"]


def test_a_resume_never_writes_through_a_link_the_session_planted_in_its_directory(shared_daemon,
                                                                                tmp_path: Path) -> None:
    """A workflow plants ``<session>/durable.seed.json.tmp`` as a symlink to a file of the user outside labd (its
    runner may write its session directory) and fails. ``labd resume`` leaves that file as it was, and the session
    resumes and completes. Before, the daemon wrote the resume's seed through the link: any file the daemon's user
    may write (``~/.bashrc``, the database) was replaced by the seed's JSON."""
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    with shared_daemon.client(timeout=30) as c:
        sid = c.start("labd_testflows:plant_seed_link", params={"target": str(victim)})
        _failed_with(c, sid, "fail, to be resumed")
        c.resume(sid)
        wait_until(lambda: c.session(sid)["status"] in ("running", "failed", "completed"), timeout=60,
                   what="the resumed session ran")
        assert victim.read_text() == "the user's own file\n"


def test_a_fifo_in_place_of_a_spool_does_not_stop_the_record(shared_daemon) -> None:
    """A workflow puts a FIFO in place of its runner's spool and its runner dies (SIGKILL: nothing removes the
    spool). The session ends ``failed`` and other sessions start and complete. Before, the daemon's ingest thread
    opened the FIFO (the spool of an ended runner) and blocked for good: that session never ended, no other
    session could start (every `labd run` timed out), nothing more was recorded, and `labd shutdown` hung."""
    with shared_daemon.client(timeout=30) as c:
        sid = c.start("labd_testflows:fifo_spool")
        final = c.wait(sid, timeout=60)
        assert final["status"] == "failed", final
        other = c.start("demo.count", params={"n": 3, "delay": 0})
        assert c.wait(other, timeout=60)["status"] == "completed"
        assert c.status()["counters"].get("spool_unreadable", 0) >= 1


def test_a_resume_writes_the_runner_key_in_the_session_directory_whatever_its_work_link(shared_daemon,
                                                                                     tmp_path: Path) -> None:
    """A workflow replaces its work directory by a symlink to ``<elsewhere>/work`` (a path that does not exist) and
    fails. ``labd resume`` creates nothing there: the runner's key file goes in the session's own directory. Before,
    the daemon put it beside the link's target (``realpath``): it made ``<elsewhere>`` and wrote ``runner.key`` in it,
    anywhere the daemon's user may write (labd's home, another session's directory, as root anywhere)."""
    elsewhere = tmp_path / "elsewhere"
    with shared_daemon.client(timeout=30) as c:
        sid = c.start("labd_testflows:plant_work_link", params={"target": str(elsewhere / "work")})
        _failed_with(c, sid, "fail, to be resumed")
        with contextlib.suppress(LabdError):  # whatever becomes of the run itself
            c.resume(sid)
            c.wait(sid, timeout=60)
        assert not elsewhere.exists(), sorted(p.name for p in elsewhere.iterdir())


def test_a_work_directory_replaced_by_a_link_serves_no_file_through_it(shared_daemon) -> None:
    """A workflow writes ``daemon.key`` in its work directory (recorded), then replaces the work directory by a symlink
    to labd's home. Reading the recorded file as a resource of `labd mcp` (the dashboard's downloads open files the
    same way) is refused and returns nothing of the home. Before, the work directory itself was opened following the
    link: the daemon's key went to the MCP client (a model), or to the dashboard."""
    import anyio
    from mcp import Client as McpClient

    from labd.frontends.mcp import build_server

    home = shared_daemon.home
    with shared_daemon.client(timeout=30) as c:
        sid = c.start("labd_testflows:work_link_to_home", params={"home": str(home)})
        assert c.wait(sid, timeout=60)["status"] == "completed"
        assert "daemon.key" in {f["path"] for f in c.files(sid)}
    key = (home / "daemon.key").read_text().strip()

    async def read() -> Any:
        async with McpClient(build_server(home)) as mc:
            try:
                return await mc.read_resource(f"labd://sessions/{sid}/file/daemon.key")
            except Exception as exc:  # noqa: BLE001 - the SDK raises its own error type
                return exc

    got = anyio.run(read)
    assert key not in repr(got)
    assert isinstance(got, Exception), got


def test_a_branch_never_links_or_copies_what_a_symlink_in_the_parents_objects_points_at(shared_daemon,
                                                                                       tmp_path: Path) -> None:
    """A workflow replaces one of its checkpoint objects by a symlink to a secret outside labd. A branch from a later
    step, which links the objects its reused steps name into its own directory, is refused (``no_checkpoint``,
    saying the checkpoints were tampered with) and leaves no directory. Before, the symlink was linked as it was, and
    where a link could not be made (another file system; an attacker made 65,000 links to hit ext4's limit) the
    copy followed it: the daemon's key was copied into the branch's own directory, where its code read it."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the daemon's key\n")
    with shared_daemon.client(timeout=30) as c:
        sid = c.start("labd_testflows:plant_object_link", params={"target": str(secret)})
        assert c.wait(sid, timeout=60)["status"] == "completed"
        before = set((shared_daemon.home / "sessions").iterdir())
        try:
            c.branch(sid, "b")
        except LabdError as exc:
            assert exc.code == "no_checkpoint" and "tampered" in exc.message, exc
        else:
            raise AssertionError("a branch linked a symlink the session planted among its objects")
        assert set((shared_daemon.home / "sessions").iterdir()) == before
