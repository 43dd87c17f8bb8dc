"""A session's code cannot fill the disk through its step checkpoints (runner/checkpoint_store.store_files), found by
an attack review: checkpoints copied every file whole, a sparse one by its apparent size (a 0.75 GiB ``truncate``
cost 1.6 GB of objects over two steps), with no cap. Now a file that would add more than MAX_FILE_BYTES to the objects
is left out of the checkpoint, which is partial and names it; a sparse file is stored with its holes; a log grown past
the per-file cap is still stored by its new chunks; and a resume from a partial checkpoint leaves the file it left out
where it is. Real daemons, real sessions; a flow lowers its own runner's per-file cap where the test needs it (the
runner is its session's own process), else the default caps."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from labd.runner.checkpoint import OBJECTS_DIR
from labd.runner.checkpoint_store import MAX_FILE_BYTES
from tests.integration.test_durable import _ended, _events

_GIB = 1 << 30
_MIB = 1 << 20
_HUGE = 3 * _GIB // 2  # over the default per-file cap (1 GiB) by size; each scan reads it whole, so no larger

#: step "make" truncates huge.bin (sparse, 1.5 GiB apparent) and writes results.csv; step "after" fails its first run
#: (a marker in a dot directory, neither tracked nor restored, tells). The caps count what a file adds to the objects,
#: and huge.bin adds one chunk of zeros and its index, so the flow lowers its runner's per-file cap under one chunk
#: (an over-cap file of real data would take 1 GiB of writes to make)
_HUGE_FLOW = f"""\
import labd.runner.checkpoint_store as caps


def huge(ctx):
    caps.MAX_FILE_BYTES = 512 << 10
    w = ctx.workdir
    marker = w / ".state" / "failed-once"
    with ctx.step("make"):
        with open(w / "huge.bin", "wb") as f:
            f.truncate({_HUGE})
        (w / "results.csv").write_text("x,y\\n1,2\\n")
    with ctx.step("after"):
        if not marker.exists():
            marker.parent.mkdir(exist_ok=True)
            marker.write_text("")
            raise RuntimeError("fails once")
        (w / "done.txt").write_text(str((w / "huge.bin").stat().st_size))
    return "ok"
"""

#: the attack review's case: a 0.75 GiB truncate, then a byte appended (another object) in the next step
_SPARSE_FLOW = f"""\
def sparse(ctx):
    w = ctx.workdir
    with ctx.step("a"):
        with open(w / "data.bin", "wb") as f:
            f.truncate({3 * _GIB // 4})
    with ctx.step("b"):
        with open(w / "data.bin", "ab") as f:
            f.write(b"x")
    with ctx.step("c"):
        (w / "c.txt").write_text("c")
    return "ok"
"""


def _on_disk(root: Path) -> int:
    """Bytes allocated on disk under ``root`` (a sparse file's holes take none)."""
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def _checkpoints(home: Path, sid: str) -> list[dict]:
    return [orjson.loads(p) for _s, _src, _node, p in _events(home, sid, "step.checkpoint")]


@pytest.mark.timeout(300)
def test_a_huge_sparse_file_is_left_out_of_the_checkpoint_and_kept_by_a_resume(shared_daemon, tmp_path: Path) -> None:
    """A step truncates a 1.5 GiB sparse file that would add more than the per-file cap (lowered to 512 KiB: its chunk
    of zeros is 1 MiB): its checkpoint completes in seconds without copying it (the objects directory stays under
    1 MiB on disk), is ``partial`` and names huge.bin in ``left_out`` (``file_cap``, its apparent size), and one
    warning says so; the session goes on to its next step.
    After that step fails once, `resume` completes the session: the restore removed nothing, huge.bin is still there
    with its size (the step after saw it), results.csv is back, and no ``file.deleted`` was recorded for huge.bin."""
    assert _HUGE > MAX_FILE_BYTES  # the default cap
    (tmp_path / "huge_flow.py").write_text(_HUGE_FLOW)
    with shared_daemon.client() as c:
        sid = c.start(f"{tmp_path / 'huge_flow.py'}:huge")
        assert _ended(c, sid, timeout=180)["status"] == "failed"
        work = Path(c.session(sid)["workdir"])
        cps = _checkpoints(shared_daemon.home, sid)
        assert [cp["name"] for cp in cps] == ["make"]
        make = cps[0]
        assert make["partial"] is True and make["left_out"] == [{"path": "huge.bin", "size": _HUGE, "why": "file_cap"}]
        assert make["files"] == 1 and make["new_bytes"] == len("x,y\n1,2\n") and make["duration"] < 5, make
        assert _on_disk(work.parent / OBJECTS_DIR) < _MIB
        logs = [orjson.loads(p) for _s, _src, _node, p in _events(shared_daemon.home, sid, "log")]
        warned = [lg["event"] for lg in logs if lg.get("logger") == "labd.runner.durable" and "left out" in lg["event"]]
        assert len(warned) == 1 and "huge.bin" in warned[0], warned
        started = [orjson.loads(p)["name"] for _s, _src, _node, p in _events(shared_daemon.home, sid, "step.started")]
        assert "after" in started  # the session went on past the capped checkpoint

        c.resume(sid)
        assert _ended(c, sid, timeout=180)["status"] == "completed", c.session(sid)["reason"]
        assert (work / "huge.bin").stat().st_size == _HUGE
        assert (work / "done.txt").read_text() == str(_HUGE)
        assert (work / "results.csv").read_text() == "x,y\n1,2\n"
        restored = [orjson.loads(p) for _s, _src, _node, p in _events(shared_daemon.home, sid, "checkpoint.restored")]
        assert len(restored) == 1 and restored[0]["removed"] == 0, restored
        deleted = [orjson.loads(p)["path"] for _s, _src, _node, p in _events(shared_daemon.home, sid, "file.deleted")]
        assert "huge.bin" not in deleted, deleted
        assert _on_disk(work.parent / OBJECTS_DIR) < _MIB


@pytest.mark.timeout(300)
def test_a_sparse_file_under_the_cap_is_stored_and_restored_with_its_holes(shared_daemon, tmp_path: Path) -> None:
    """The attack review's case: a 0.75 GiB truncate, then a byte appended in the next step. Both checkpoints store
    it (complete, not partial), as chunks: its 1 MiB of zeros once, so each checkpoint's new objects are a few MiB
    (apparent size, not 0.75 GiB) and the objects directory takes under 16 MiB on disk, not 1.5 GiB; a branch from
    step "c" (its parts linked) gets data.bin written back whole (its size and last byte) and sparse."""
    (tmp_path / "sparse_flow.py").write_text(_SPARSE_FLOW)
    size = 3 * _GIB // 4
    with shared_daemon.client() as c:
        sid = c.start(f"{tmp_path / 'sparse_flow.py'}:sparse")
        assert _ended(c, sid, timeout=180)["status"] == "completed", c.session(sid)["reason"]
        work = Path(c.session(sid)["workdir"])
        cps = {cp["name"]: cp for cp in _checkpoints(shared_daemon.home, sid)}
        assert not any(cp.get("partial") for cp in cps.values()), cps
        assert cps["a"]["new_bytes"] < 4 * _MIB and cps["b"]["new_bytes"] < 4 * _MIB, cps
        assert _on_disk(work.parent / OBJECTS_DIR) < 16 * _MIB
        kid = c.branch(sid, "c")["sessions"][0]["session"]
        assert _ended(c, kid, timeout=180)["status"] == "completed", c.session(kid)["reason"]
        branch_work = Path(c.session(kid)["workdir"])
        assert branch_work != work
        data = branch_work / "data.bin"
        assert data.stat().st_size == size + 1 and data.stat().st_blocks * 512 < 16 * _MIB
        with open(data, "rb") as f:
            f.seek(size - 4)
            assert f.read() == b"\0\0\0\0x"
        assert (branch_work / "c.txt").read_text() == "c"


#: a background thread saves out.json atomically (write a temporary file, rename it over) as fast as it can while the
#: workflow runs 40 short steps; with ``secret``, it also swaps out.json for a symlink to that file outside the work
#: directory and back (the attack review's flow)
_SAVES_FLOW = """\
import os, threading, time


def saves(ctx, steps=40, secret=""):
    stop = threading.Event()
    saved = [0]

    def loop():
        while not stop.is_set():
            saved[0] += 1
            with open("out.json.tmp", "w") as f:
                f.write(f"regular {saved[0]}\\n" * (1000 + saved[0] % 7))  # a new size at most saves
            os.replace("out.json.tmp", "out.json")
            if secret:
                try:
                    os.symlink(secret, "out.json.l")
                except FileExistsError:
                    pass
                os.replace("out.json.l", "out.json")

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    for i in range(steps):
        with ctx.step(f"s{i}"):
            time.sleep(0.05)
    stop.set()
    th.join()
    if os.path.islink("out.json"):
        os.unlink("out.json")
    return saved[0]
"""


def _check_objects(work: Path, cps: list[dict]) -> None:
    """Every object of the session holds the sha256 it is named by, and every checkpoint's manifest (resolved as a
    resume would: stored objects and the changes inline in the events) names objects of the sizes it records: no file
    was stored under a digest other than its scan's."""
    from labd.runner.checkpoint import ObjectStore, load_manifests

    store = ObjectStore(work.parent / OBJECTS_DIR)
    for path in store.root.rglob("*"):
        if path.is_file():
            store.get_verified(path.name)
    inline = {cp["manifest"]: cp["manifest_delta"] for cp in cps if "manifest_delta" in cp}
    manifests = load_manifests(lambda d: inline[d] if d in inline else store.get_json(d),
                               [cp["manifest"] for cp in cps])
    for cp in cps:
        for key, (digest, size, _mode) in manifests[cp["manifest"]].items():
            assert store.path(digest).stat().st_size == size, (cp["name"], key)


@pytest.mark.timeout(300)
def test_a_workflow_saving_files_atomically_in_the_background_completes(shared_daemon, tmp_path: Path) -> None:
    """A thread saves out.json atomically (temporary file + rename) in a loop across 40 steps: every checkpoint is
    recorded and the session completes. A file renamed away or rewritten between a scan and its copy is not in that
    checkpoint, or left out as ``changed``, never a failed checkpoint (before, `lexists` after a FileNotFoundError
    raced with the next save and failed the session); every object a manifest names holds its digest and size."""
    (tmp_path / "saves_flow.py").write_text(_SAVES_FLOW)
    with shared_daemon.client() as c:
        sid = c.start(f"{tmp_path / 'saves_flow.py'}:saves")
        assert _ended(c, sid, timeout=240)["status"] == "completed", c.session(sid)["reason"]
        work = Path(c.session(sid)["workdir"])
        cps = _checkpoints(shared_daemon.home, sid)
        assert [cp["name"] for cp in cps] == [f"s{i}" for i in range(40)]
        whys = {lo["why"] for cp in cps for lo in cp.get("left_out", ())}
        assert whys <= {"changed"}, whys
        _check_objects(work, cps)


@pytest.mark.timeout(300)
def test_a_symlink_swapped_in_between_scan_and_copy_is_never_stored(shared_daemon, tmp_path: Path) -> None:
    """The attack review's flow: a thread saves out.json atomically and swaps it for a symlink to a secret outside
    the work directory, in a loop across 40 steps. The session completes, and no object of the session holds the
    secret (before, a checkpoint copied the symlink's target as out.json, and a branch wrote it back)."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOP SECRET " + bytes(range(256)) * 4)
    (tmp_path / "saves_flow.py").write_text(_SAVES_FLOW)
    with shared_daemon.client() as c:
        sid = c.start(f"{tmp_path / 'saves_flow.py'}:saves", params={"secret": str(secret)})
        assert _ended(c, sid, timeout=240)["status"] == "completed", c.session(sid)["reason"]
        work = Path(c.session(sid)["workdir"])
        objects = work.parent / OBJECTS_DIR
        leaked = [p for p in objects.rglob("*") if p.is_file() and b"TOP SECRET" in p.read_bytes()]
        assert leaked == []
        _check_objects(work, _checkpoints(shared_daemon.home, sid))


#: a log of 5 MiB at "epoch 0", grown by 1 MiB and 1,000 bytes at each later epoch, past the per-file cap its runner
#: sets (6 MiB) from "epoch 1" on; with ``fail_at``, that epoch fails its first run (a marker in a dot directory tells)
_LOG_FLOW = """\
import os

import labd.runner.checkpoint_store as caps


def log(ctx, epochs: int = 5, fail_at: int = -1):
    caps.MAX_FILE_BYTES = 6 << 20
    log = ctx.workdir / "train.log"
    marker = ctx.workdir / ".state" / "failed-once"
    for i in range(epochs):
        with ctx.step(f"epoch {i}"):
            with open(log, "ab") as f:
                f.write(os.urandom((5 << 20) if i == 0 else (1 << 20) + 1000))
            if i == fail_at and not marker.exists():
                marker.parent.mkdir(exist_ok=True)
                marker.write_text("")
                raise RuntimeError("fails once")
    return os.path.getsize(log)
"""


@pytest.mark.timeout(300)
def test_a_log_grown_past_the_file_cap_is_checkpointed_by_its_new_chunks(shared_daemon, tmp_path: Path) -> None:
    """A log over its runner's per-file cap (6 MiB) from the second step on is in every checkpoint (none partial):
    each later step adds only its new chunks (at most 3 MiB: the appended chunks and the formerly last, partial one)
    and its index. A branch from "epoch 3" starts from the log exactly as it was after "epoch 2"; a session failing at
    "epoch 3" resumes from the log of "epoch 2" and completes with the log of 5 epochs. Before, every checkpoint after
    the first left the log out (``file_cap``), so the branch and the resume started without the log."""
    (tmp_path / "log_flow.py").write_text(_LOG_FLOW)
    after = [(5 << 20) + i * ((1 << 20) + 1000) for i in range(5)]  # the log's size after each epoch
    with shared_daemon.client() as c:
        sid = c.start(f"{tmp_path / 'log_flow.py'}:log")
        assert _ended(c, sid, timeout=120)["status"] == "completed", c.session(sid)["reason"]
        work = Path(c.session(sid)["workdir"])
        final = (work / "train.log").read_bytes()
        assert len(final) == after[-1]
        cps = _checkpoints(shared_daemon.home, sid)
        assert [cp["name"] for cp in cps] == [f"epoch {i}" for i in range(5)]
        assert not [cp.get("left_out") for cp in cps if cp.get("partial")], cps
        assert all(cp["new_bytes"] <= (3 << 20) + 16_000 for cp in cps[1:]), [cp["new_bytes"] for cp in cps]

        kid = c.branch(sid, "epoch 3", params={"epochs": 3})["sessions"][0]["session"]
        assert _ended(c, kid, timeout=120)["status"] == "completed", c.session(kid)["reason"]
        assert (Path(c.session(kid)["workdir"]) / "train.log").read_bytes() == final[:after[2]]

        failed = c.start(f"{tmp_path / 'log_flow.py'}:log", params={"fail_at": 3})
        assert _ended(c, failed, timeout=120)["status"] == "failed"
        failed_work = Path(c.session(failed)["workdir"])
        kept = (failed_work / "train.log").read_bytes()[:after[2]]
        c.resume(failed)
        assert _ended(c, failed, timeout=120)["status"] == "completed", c.session(failed)["reason"]
        resumed = (failed_work / "train.log").read_bytes()
        assert len(resumed) == after[-1] and resumed[:after[2]] == kept
