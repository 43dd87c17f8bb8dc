"""Durable sessions and the record of their work directory: the files a resume or branch restores are recorded
(``file.*`` events, ``restored`` rows, `labd files` shows ``(restored)``) so that `labd files` and `labd compare`
tell what the work directory held; `labd compare` of a branch with its parent shows the steps it reused as
unchanged; a branch's and a resume's seed are built off the request loop."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import REPO, SUPPORT, running_daemon, wait_until
from tests.integration.cli_support import labd
from tests.integration.test_durable import _ended, _events, _second_step

#: s0 writes keep.txt and data.txt; s1 changes data.txt, adds gone.txt and sub/b.txt; s2 deletes gone.txt and
#: writes out.txt with the `tag` param; with `fail_once`, s2 fails its first run (a marker in a dot directory of the
#: work directory, which is neither tracked nor restored, tells), after it made a mess (data.txt rewritten,
#: keep.txt deleted, junk.txt created)
_FLOW = """\
import os

def files(ctx, tag: str = "first", fail_once: bool = False):
    w = ctx.workdir
    marker = w / ".state" / "failed-once"
    with ctx.step("s0"):
        (w / "keep.txt").write_text("keep")
        (w / "data.txt").write_text("v0")
    with ctx.step("s1"):
        (w / "data.txt").write_text("v1")
        (w / "gone.txt").write_text("soon gone")
        (w / "sub").mkdir(exist_ok=True)
        (w / "sub" / "b.txt").write_text("b")
    with ctx.step("s2"):
        if fail_once and not marker.exists():
            marker.parent.mkdir(exist_ok=True)
            marker.write_text("")
            (w / "data.txt").write_text("mess")
            os.remove(w / "keep.txt")
            (w / "junk.txt").write_text("junk")
            raise RuntimeError("s2 fails once")
        os.remove(w / "gone.txt")
        (w / "out.txt").write_text(tag)
    return tag
"""


def _flow(tmp_path: Path) -> str:
    (tmp_path / "durable_files_flow.py").write_text(_FLOW)
    return f"{tmp_path / 'durable_files_flow.py'}:files"


def _recorded(files: list[dict[str, Any]]) -> dict[str, str]:
    """The work directory as a session's file events leave it: path -> sha256."""
    final: dict[str, str] = {}
    for f in files:
        if f["change"] == "deleted":
            final.pop(f["path"], None)
        else:
            final[f["path"]] = f["sha256"]
    return final


def _on_disk(work: Path) -> dict[str, str]:
    return {str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in work.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts)}


def _step_cells(sid: str) -> list[tuple[str, str, str]]:
    """`labd files SID` (plain text: a pipe) as (PATH, CHANGE, STEP) per row, in the table's order."""
    out = labd("files", sid)
    assert out.returncode == 0, out.stderr
    header, *lines = out.stdout.splitlines()
    names = header.split()
    assert names == ["PATH", "CHANGE", "SIZE", "KIND", "SHA256", "STEP", "AGENT", "TOOL"], header
    cells = [line.split() for line in lines]  # no cell of these rows has a space
    assert all(len(c) == len(names) for c in cells), out.stdout
    return [(c[0], c[1], c[5]) for c in cells]


def _expected_cells(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(f["path"], f["change"], "(restored)" if f["restored"] else f["step"] or "-") for f in rows]


def _while_reading(obj: Path, request: Callable[[], dict[str, Any]], meanwhile: Callable[[], Any]) -> tuple[Any, Any]:
    """Run ``request`` (on a thread) while the daemon's read of the object file ``obj`` is held up (a daemon of
    :func:`_held_daemon`: ``<obj>.hold`` holds it, ``<obj>.reading`` says it is held). Once the read is held,
    ``meanwhile()`` runs; then the read goes on. Returns (``request``'s reply or exception, ``meanwhile``'s result
    or exception). (A FIFO in place of the object held it before; the daemon now refuses one.)"""
    hold, reading = Path(f"{obj}.hold"), Path(f"{obj}.reading")
    hold.touch()
    reply: list[Any] = [None]

    def ask() -> None:
        try:
            reply[0] = request()
        except Exception as exc:  # noqa: BLE001 - returned to the test, which asserts on it
            reply[0] = exc

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        wait_until(reading.exists, timeout=30, what=f"the daemon reading {obj.name}")
        try:
            during = meanwhile()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            during = exc
    finally:
        hold.unlink()
    asker.join(60)
    return reply[0], during


@pytest.fixture
def held_daemon(isolated_env: Path) -> Iterator[Any]:
    """A daemon whose reads of checkpoint objects a test can hold up (:func:`_while_reading`)."""
    held = SUPPORT / "held_reads"
    with running_daemon(isolated_env, extra_env={"PYTHONPATH": os.pathsep.join([str(held), str(SUPPORT),
                                                                                 str(REPO)])}) as d:
        yield d


def _first_manifest(daemon: Any, c: Any, sid: str) -> Path:
    first = c.checkpoints(sid)[0]["manifest"]
    return daemon.home / "sessions" / sid / "checkpoints" / "objects" / first[:2] / first


def test_a_branch_records_the_files_its_restore_put_in_place(shared_daemon, tmp_path: Path) -> None:
    """A branch from s2 starts from the parent's files after s1, restored from the checkpoint: its record has a
    ``file.created`` (no node, ``restored``) for each of them with the parent's content hash, so `labd files` of
    the branch lists exactly what its work directory holds, and `labd compare parent branch` shows every file the
    same but out.txt, which the branch really wrote differently (its `tag` param). Those rows (only they) carry
    ``restored: True``, and `labd files` shows ``(restored)`` as their step. Before, the restored files were
    missing from the branch's record (compare called them ``removed``); then the files table dropped the flag."""
    daemon = shared_daemon  # the module's daemon: the test reads only its own sessions
    flow = _flow(tmp_path)
    with daemon.client() as c:
        parent = c.start(flow)
        assert _ended(c, parent)["status"] == "completed"
        kid = c.branch(parent, "s2", params={"tag": "second"})["sessions"][0]["session"]
        assert _ended(c, kid)["status"] == "completed", c.session(kid)["reason"]
        files = c.files(kid)
        restored = [f for f in files if f["node_id"] is None]
        assert sorted((f["path"], f["change"]) for f in restored) == [
            ("data.txt", "created"), ("gone.txt", "created"), ("keep.txt", "created"), ("sub/b.txt", "created")]
        assert all(f["restored"] is True for f in restored)  # the files table keeps the events' flag
        assert sorted((f["path"], f["change"], f["step"]) for f in files if f["restored"] is False) == [
            ("gone.txt", "deleted", "s2"), ("out.txt", "created", "s2")]
        assert all(f["restored"] is False for f in c.files(parent))
        assert _step_cells(kid) == _expected_cells(files)  # `labd files` says (restored) for exactly those
        assert "(restored)" not in {step for _p, _ch, step in _step_cells(parent)}
        work = Path(c.session(kid)["workdir"])
        assert _recorded(files) == _on_disk(work)
        assert set(_on_disk(work)) == {"data.txt", "keep.txt", "sub/b.txt", "out.txt"}
        parent_files = _recorded(c.files(parent))
        assert {f["path"]: f["sha256"] for f in restored if f["path"] != "gone.txt"} == {
            p: h for p, h in parent_files.items() if p not in ("out.txt",)}
        events = [p for _s, _src, node, p in _events(daemon.home, kid, "file.created") if node is None]
        assert events and all('"restored":true' in p for p in events), events
        compared = c.compare(parent, kid)
        states = {f["path"]: f["states"][0] for f in compared["files"]}
        assert states == {"data.txt": "same", "keep.txt": "same", "sub/b.txt": "same", "out.txt": "changed"}, states


def test_a_resume_records_what_its_restore_changed_and_nothing_twice(shared_daemon, tmp_path: Path) -> None:
    """s2 fails once after rewriting data.txt, deleting keep.txt and creating junk.txt (all recorded). The resume
    restores the work directory of s1's checkpoint, and records exactly what that changed against the session's
    own record: data.txt changed back, keep.txt created again, junk.txt deleted; the files its record already
    holds as restored (sub/b.txt, gone.txt) get no new event. `labd files` then tells what the work directory
    holds, and shows ``(restored)`` as the step of exactly the restore's rows (``--json``: ``restored``). Before,
    the record kept the failed run's data.txt and junk.txt and never got keep.txt back."""
    daemon = shared_daemon  # the module's daemon: the test reads only its own sessions
    flow = _flow(tmp_path)
    with daemon.client() as c:
        sid = c.start(flow, params={"fail_once": True})
        assert _ended(c, sid)["status"] == "failed"
        before = c.session(sid)["last_seq"]
        c.resume(sid)
        assert c.wait(sid, timeout=60)["status"] == "completed", c.session(sid)["reason"]
        files = c.files(sid)
        restore = [(f["path"], f["change"]) for f in files if f["seq"] > before and f["node_id"] is None]
        assert sorted(restore) == [("data.txt", "changed"), ("junk.txt", "deleted"), ("keep.txt", "created")]
        assert sorted((f["path"], f["change"]) for f in files if f["restored"]) == sorted(restore)
        assert all(f["step"] in ("s0", "s1", "s2") for f in files if not f["restored"])
        listed = orjson.loads(labd("files", sid, "--json").stdout)
        assert [(f["path"], f["seq"], f["restored"]) for f in listed] == [
            (f["path"], f["seq"], f["restored"]) for f in files]
        assert _step_cells(sid) == _expected_cells(files)
        assert [f["change"] for f in files if f["path"] == "sub/b.txt"] == ["created"]  # never recorded twice
        assert _recorded(files) == _on_disk(Path(c.session(sid)["workdir"]))
        data = next(f for f in files if f["seq"] > before and f["path"] == "data.txt")
        assert data["sha256"] == hashlib.sha256(b"v1").hexdigest()


def test_compare_shows_the_steps_a_branch_reused_as_unchanged(shared_daemon) -> None:
    """planning_and_control branched from its second step, and that branch branched again from the same step:
    `labd compare parent branch` (and parent with the branch of the branch) shows the planning and step 1, which
    the branches reused, unchanged: their status, calls and result are those of the run they reused (the
    parent's, through the first branch for the second). Before, a reused step had no agent turns of its own, so
    its result, status and calls all read as changed. The steps nested in a reused step (a planned step's
    attempts) read the same way: the branch skipped the step's body, so they ran where it ran; they read as
    `(absent)` and changed before."""
    daemon = shared_daemon  # the module's daemon: the test reads only its own sessions
    with daemon.client() as c:
        parent = c.start("planning_and_control", params={"max_steps": 2})
        assert _ended(c, parent)["status"] == "completed"
        second = _second_step(c, parent)
        b1 = c.branch(parent, second["node_id"])["sessions"][0]["session"]
        assert _ended(c, b1)["status"] == "completed"
        b1_second = _second_step(c, b1)
        b2 = c.branch(b1, b1_second["node_id"])["sessions"][0]["session"]
        assert _ended(c, b2)["status"] == "completed"
        for kid in (b1, b2):
            rows = {r["name"]: r for r in c.compare(parent, kid)["steps"]}
            reused = [n for n in rows if n == "planning" or n.startswith("step 1")]
            assert len(reused) == 3 and "step 1 attempt 1" in reused, sorted(rows)
            nested = rows["step 1 attempt 1"]["sessions"][1]
            assert nested["origin"]["session"] == parent and nested["inside"], nested
            for name in reused:
                row = rows[name]
                assert row["changed"] == [], (name, row)
                assert row["sessions"][0]["result"], row  # a real result (the last agent turn's output)
                assert row["sessions"][1]["reused"] and row["sessions"][1]["result"] == row["sessions"][0]["result"]


def test_a_branch_builds_its_seed_off_the_request_loop(held_daemon, tmp_path: Path) -> None:
    """While `session.branch` reads the parent's checkpoints (here held up: the first checkpoint's manifest object
    is held up by the test), the daemon answers other requests (`ping`), and the branch goes on once the read
    is done. Before, the seed was built on the request loop and every client waited for it."""
    daemon = held_daemon
    flow = _flow(tmp_path)
    with daemon.client() as c:
        parent = c.start(flow)
        assert _ended(c, parent)["status"] == "completed"
        obj = _first_manifest(daemon, c, parent)

    def ping() -> Any:
        with daemon.client(timeout=5) as c:
            return c.ping()

    def branch() -> dict[str, Any]:
        with daemon.client(timeout=60) as c2:
            return c2.branch(parent, "s2")

    reply, answered = _while_reading(obj, branch, ping)
    assert isinstance(answered, dict), f"the daemon did not answer while the branch read: {answered}"
    assert isinstance(reply, dict) and "sessions" in reply, reply
    with daemon.client() as c:
        assert _ended(c, reply["sessions"][0]["session"])["status"] == "completed"


def test_a_resume_builds_its_seed_off_the_request_loop(held_daemon, tmp_path: Path) -> None:
    """While `session.resume` reads the failed session's checkpoints (held up as above), the daemon answers other
    requests (`ping`), a second resume of the same session is refused `not_resumable` ("being resumed already"),
    and the resume goes on once the read is done: the session runs again and completes. Before, the seed was built
    on the request loop and every client waited."""
    from labd.ipc import LabdError

    daemon = held_daemon

    with daemon.client() as c:
        sid = c.start(_flow(tmp_path), params={"fail_once": True})
        assert _ended(c, sid)["status"] == "failed"
        obj = _first_manifest(daemon, c, sid)

    def ping_and_resume_again() -> tuple[Any, Any]:
        with daemon.client(timeout=5) as c:
            answered = c.ping()
            try:
                return answered, c.resume(sid)
            except LabdError as exc:
                return answered, exc

    def resume() -> dict[str, Any]:
        with daemon.client(timeout=60) as c2:
            return c2.resume(sid)

    reply, during = _while_reading(obj, resume, ping_and_resume_again)
    assert isinstance(during, tuple), f"the daemon did not answer while the resume read: {during}"
    second = during[1]
    assert isinstance(second, LabdError) and second.code == "not_resumable" and "being resumed" in str(second)
    assert isinstance(reply, dict) and reply.get("resumed") and reply.get("steps_kept") == 2, reply
    with daemon.client() as c:
        assert _ended(c, sid)["status"] == "completed"


def test_manifests_resolved_one_from_another_are_those_resolved_alone(tmp_path: Path) -> None:
    """A branch's seed resolves the manifest of every reused step from the previous one (``load_manifests``): for a
    chain of 80 checkpoints (stored as changes, whole again every MAX_CHAIN, some unchanged, files added, changed
    and deleted) each is exactly what resolving it alone (``load_manifest``) gives."""
    import random

    from labd.runner.checkpoint import ObjectStore, load_manifest, load_manifests, manifest_object

    store = ObjectStore(tmp_path / "objects")
    rng = random.Random(7)
    current: dict[str, list[Any]] = {}
    base: tuple[str, dict[str, list[Any]], int] | None = None
    digests = []
    for i in range(80):
        for _ in range(rng.randint(0, 4)):
            rel = f"f{rng.randint(0, 30)}.txt"
            if rel in current and rng.random() < 0.3:
                del current[rel]
            else:
                current[rel] = [hashlib.sha256(f"{rel}{i}".encode()).hexdigest(), i, 0o644]
        obj = manifest_object(dict(current), base)
        digest = store.put_json(obj)
        base = (digest, dict(current), base[2] + 1 if base is not None and "base" in obj else 0)
        digests.append(digest)
    together = load_manifests(store.get_json, digests)
    assert {d: load_manifest(store.get_json, d)[0] for d in digests} == together
    assert together[digests[-1]] == current


_GROWING_FLOW = """\
import os

def grow(ctx, steps: int = 8, fail_at: int = 0):
    log = ctx.workdir / "train.log"
    for i in range(steps):
        with ctx.step(f"epoch {i}"):
            with open(log, "ab") as f:
                f.write(os.urandom((5 if i == 0 else 1) << 20))
            marker = ctx.workdir / ".state" / "failed-once"  # a dot directory: neither tracked nor restored
            if i == fail_at - 1 and not marker.exists():
                marker.parent.mkdir(exist_ok=True)
                marker.write_text("")
                raise RuntimeError("fails once")
    return os.path.getsize(log)
"""


def test_a_log_growing_over_many_steps_is_stored_once_and_each_step_restores_its_own_version(shared_daemon,
                                                                                          tmp_path: Path) -> None:
    """A session appends 1 MiB to a 5 MiB log in each of 8 steps: its checkpoints' objects hold about the final
    12 MiB (chunks), not the 68 MiB of one whole copy per step (before: every step stored the log whole, up to
    the session's 20 GiB cap, after which nothing new was stored). A branch from step "epoch 3" starts from the log
    as it was after "epoch 2" (its first 7 MiB, exactly); a failed session resumed from its last step goes on."""
    (tmp_path / "growing_flow.py").write_text(_GROWING_FLOW)
    with shared_daemon.client() as c:
        sid = c.start(f"{tmp_path / 'growing_flow.py'}:grow")
        assert _ended(c, sid, timeout=120)["status"] == "completed", c.session(sid)["reason"]
        work = Path(c.session(sid)["workdir"])
        objects = work.parent / "checkpoints" / "objects"
        stored = sum(p.stat().st_size for p in objects.rglob("*") if p.is_file())
        assert stored < 16 << 20, f"{stored:,} bytes of objects for a 12 MiB log"
        final = (work / "train.log").read_bytes()
        kid = c.branch(sid, "epoch 3", params={"steps": 3})["sessions"][0]["session"]
        assert _ended(c, kid, timeout=120)["status"] == "completed", c.session(kid)["reason"]
        branch_log = (Path(c.session(kid)["workdir"]) / "train.log").read_bytes()
        assert branch_log == final[:7 << 20]
        failed = c.start(f"{tmp_path / 'growing_flow.py'}:grow", params={"steps": 6, "fail_at": 5})
        assert _ended(c, failed, timeout=120)["status"] == "failed"
        c.resume(failed)
        assert _ended(c, failed, timeout=120)["status"] == "completed", c.session(failed)["reason"]
        assert (Path(c.session(failed)["workdir"]) / "train.log").stat().st_size == 10 << 20


_MODE_FLOW = """\
import os
import stat
import subprocess

def modes(ctx, fail_once: bool = False):
    w = ctx.workdir
    marker = w / ".state" / "failed-once"
    with ctx.step("write"):
        (w / "run.sh").write_text("#!/bin/sh\\necho ran\\n")
        (w / "secret.txt").write_text("mine")
    with ctx.step("chmod"):  # a change of mode only: neither the size nor the mtime moves
        os.chmod(w / "run.sh", 0o755)
        os.chmod(w / "secret.txt", 0o600)
    with ctx.step("use"):
        if fail_once and not marker.exists():
            marker.parent.mkdir(exist_ok=True)
            marker.write_text("")
            raise RuntimeError("use fails once")
        ran = subprocess.run([str(w / "run.sh")], capture_output=True, text=True, check=True).stdout.strip()
        return [ran, oct(stat.S_IMODE(os.stat(w / "secret.txt").st_mode))]
"""


def test_a_step_that_only_changes_modes_is_restored_with_them(shared_daemon, tmp_path: Path) -> None:
    """A step that only chmods files (a script made executable, a file made private): a branch from the next step
    and a resume of it both find the modes that step set. Before, the scan skipped a file whose size and mtime had
    not moved, so the checkpoint kept the old modes: the branch failed with PermissionError running the script,
    and the resume found the private file readable by all again."""
    (tmp_path / "mode_flow.py").write_text(_MODE_FLOW)
    flow = f"{tmp_path / 'mode_flow.py'}:modes"
    with shared_daemon.client() as c:
        parent = c.start(flow)
        assert _ended(c, parent)["status"] == "completed"
        assert c.result(parent) == ["ran", "0o600"]
        kid = c.branch(parent, "use")["sessions"][0]["session"]
        assert _ended(c, kid)["status"] == "completed", c.session(kid).get("reason")
        assert c.result(kid) == ["ran", "0o600"]
        failing = c.start(flow, params={"fail_once": True})
        assert _ended(c, failing)["status"] == "failed"
        c.resume(failing)
        wait_until(lambda: c.session(failing)["status"] not in ("failed", "queued", "starting", "running"))
        assert c.session(failing)["status"] == "completed", c.session(failing).get("reason")
        assert c.result(failing) == ["ran", "0o600"]


def test_a_resume_removes_what_a_runner_killed_while_storing_left(shared_daemon, tmp_path: Path) -> None:
    """A runner killed while it stored a file into the session's objects leaves that file's temporary copy (up to a
    chunk, 1 MiB, each) behind; a review found 12 MiB of them after several kills, kept for good and counted
    against the session's cap. The next runner of the session (a resume) removes them, and only them: the
    objects stay and the resumed session restores and completes as before."""
    flow = _flow(tmp_path)
    with shared_daemon.client() as c:
        sid = c.start(flow, params={"fail_once": True})
        assert _ended(c, sid)["status"] == "failed"
        objects = Path(c.session(sid)["workdir"]).parent / "checkpoints" / "objects"
        kept = sorted(p.relative_to(objects) for p in objects.rglob("*") if p.is_file())
        assert kept
        stale = [objects / ".tmp-999999-0-deadbeef", objects / ".tmp-999998-3-0badf00d"]
        for p in stale:
            p.write_bytes(b"\0" * (1 << 20))
        c.resume(sid)
        wait_until(lambda: c.session(sid)["status"] not in ("failed", "queued", "starting", "running"), timeout=60)
        assert c.session(sid)["status"] == "completed", c.session(sid).get("reason")
    assert not any(p.exists() for p in stale)
    assert set(kept) <= {p.relative_to(objects) for p in objects.rglob("*") if p.is_file()}


_LINK_FLOW = """\
import os

def links(ctx):
    w = ctx.workdir
    with ctx.step("prepare"):
        (w / "data" / "v1").mkdir(parents=True)
        (w / "data" / "v1" / "x.csv").write_text("1,2\\n")
        os.symlink("v1", w / "data" / "current")
    with ctx.step("use"):
        return (w / "data" / "current" / "x.csv").read_text()
"""


def test_symlinks_a_checkpoint_does_not_keep_are_said_once(shared_daemon, tmp_path: Path) -> None:
    """Checkpoints keep regular files only: a workflow that makes a symlink is told so once, in its record (a review
    found a branch from a later step failing on the missing link without a word). The warning names the link."""
    (tmp_path / "link_flow.py").write_text(_LINK_FLOW)
    with shared_daemon.client() as c:
        sid = c.start(f"{tmp_path / 'link_flow.py'}:links")
        assert _ended(c, sid)["status"] == "completed"
        warned = [e["payload"]["event"] for e in c.history(sid) if e["kind"] == "log"
                  and e["payload"].get("logger") == "labd.runner.files"]
    assert len(warned) == 1 and "data/current" in warned[0] and "regular files only" in warned[0], warned


def test_compare_of_a_branch_and_its_replay_shows_the_reused_steps_unchanged(shared_daemon, tmp_path: Path) -> None:
    """A branch and a replay of that branch reused the same steps (both from the branch's parent): `labd compare
    branch replay` shows them unchanged, each cell the run it reused. Before, a replay's reused steps were not followed
    to where they ran (only a branch's were), and read as changed in result and status."""
    flow = _flow(tmp_path)
    with shared_daemon.client() as c:
        parent = c.start(flow)
        assert _ended(c, parent)["status"] == "completed"
        kid = c.branch(parent, "s2")["sessions"][0]["session"]
        assert _ended(c, kid)["status"] == "completed"
        replay = c.replay(kid)
        assert _ended(c, replay)["status"] == "completed"
        rows = {r["name"]: r for r in c.compare(kid, replay)["steps"]}
    for name in ("s0", "s1"):
        assert rows[name]["changed"] == [], (name, rows[name])
        assert all(cell["reused"] and cell["origin"]["session"] == parent for cell in rows[name]["sessions"]), rows
