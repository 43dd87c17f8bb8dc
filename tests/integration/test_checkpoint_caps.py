"""A session's code cannot fill the disk through its step checkpoints (labd.runner.checkpoint.store_files), found by
an attack review: checkpoints copied every file whole, a sparse one by its apparent size (a 0.75 GiB ``truncate``
cost 1.6 GB of objects over two steps), with no cap. Now a file over MAX_FILE_BYTES (by apparent size) is left out
of the checkpoint, which is partial and names it; a sparse file under the cap is stored with its holes; and a resume
from a partial checkpoint leaves the file it left out where it is. Real daemons, real sessions, the default caps."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from labd.runner.checkpoint import MAX_FILE_BYTES, OBJECTS_DIR
from tests.integration.test_durable import _ended, _events

_GIB = 1 << 30
_MIB = 1 << 20
_HUGE = 3 * _GIB // 2  # over the per-file cap (1 GiB); each scan reads it whole, so no larger

#: step "make" truncates huge.bin (sparse, 1.5 GiB apparent) and writes results.csv; step "after" fails its first run
#: (a marker in a dot directory, neither tracked nor restored, tells)
_HUGE_FLOW = f"""\
def huge(ctx):
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
def test_a_huge_sparse_file_is_left_out_of_the_checkpoint_and_kept_by_a_resume(daemon, tmp_path: Path) -> None:
    """A step truncates a 1.5 GiB sparse file (over the 1 GiB per-file cap): its checkpoint completes in seconds
    without copying it (the objects directory stays under 1 MiB on disk), is ``partial`` and names huge.bin in
    ``left_out`` (``file_cap``, its apparent size), and one warning says so; the session goes on to its next step.
    After that step fails once, `resume` completes the session: the restore removed nothing, huge.bin is still there
    with its size (the step after saw it), results.csv is back, and no ``file.deleted`` was recorded for huge.bin."""
    assert _HUGE > MAX_FILE_BYTES
    (tmp_path / "huge_flow.py").write_text(_HUGE_FLOW)
    with daemon.client() as c:
        sid = c.start(f"{tmp_path / 'huge_flow.py'}:huge")
        assert _ended(c, sid, timeout=180)["status"] == "failed"
        work = Path(c.session(sid)["workdir"])
        cps = _checkpoints(daemon.home, sid)
        assert [cp["name"] for cp in cps] == ["make"]
        make = cps[0]
        assert make["partial"] is True and make["left_out"] == [{"path": "huge.bin", "size": _HUGE, "why": "file_cap"}]
        assert make["files"] == 1 and make["new_bytes"] == len("x,y\n1,2\n") and make["duration"] < 5, make
        assert _on_disk(work.parent / OBJECTS_DIR) < _MIB
        logs = [orjson.loads(p) for _s, _src, _node, p in _events(daemon.home, sid, "log")]
        warned = [lg["event"] for lg in logs if lg.get("logger") == "labd.runner.durable" and "left out" in lg["event"]]
        assert len(warned) == 1 and "huge.bin" in warned[0], warned
        started = [orjson.loads(p)["name"] for _s, _src, _node, p in _events(daemon.home, sid, "step.started")]
        assert "after" in started  # the session went on past the capped checkpoint

        c.resume(sid)
        assert _ended(c, sid, timeout=180)["status"] == "completed", c.session(sid)["reason"]
        assert (work / "huge.bin").stat().st_size == _HUGE
        assert (work / "done.txt").read_text() == str(_HUGE)
        assert (work / "results.csv").read_text() == "x,y\n1,2\n"
        restored = [orjson.loads(p) for _s, _src, _node, p in _events(daemon.home, sid, "checkpoint.restored")]
        assert len(restored) == 1 and restored[0]["removed"] == 0, restored
        deleted = [orjson.loads(p)["path"] for _s, _src, _node, p in _events(daemon.home, sid, "file.deleted")]
        assert "huge.bin" not in deleted, deleted
        assert _on_disk(work.parent / OBJECTS_DIR) < _MIB


@pytest.mark.timeout(300)
def test_a_sparse_file_under_the_cap_is_stored_and_restored_with_its_holes(daemon, tmp_path: Path) -> None:
    """The attack review's case: a 0.75 GiB truncate, then a byte appended in the next step. Both checkpoints store
    it (complete, not partial; new_bytes its apparent size), yet the objects directory takes under 16 MiB on disk,
    not 1.5 GiB; a branch from step "c" gets data.bin written back whole (its size and last byte) and sparse."""
    (tmp_path / "sparse_flow.py").write_text(_SPARSE_FLOW)
    size = 3 * _GIB // 4
    with daemon.client() as c:
        sid = c.start(f"{tmp_path / 'sparse_flow.py'}:sparse")
        assert _ended(c, sid, timeout=180)["status"] == "completed", c.session(sid)["reason"]
        work = Path(c.session(sid)["workdir"])
        cps = {cp["name"]: cp for cp in _checkpoints(daemon.home, sid)}
        assert not any(cp.get("partial") for cp in cps.values()), cps
        assert cps["a"]["new_bytes"] == size and cps["b"]["new_bytes"] == size + 1
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
