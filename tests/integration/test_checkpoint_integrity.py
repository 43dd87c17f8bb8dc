"""Damaged checkpoint objects with a real daemon: a file object whose content no longer matches its sha256 is
not restored (the resume fails naming the file, the step that wrote it does not run on garbage); a result
object damaged or deleted makes `resume` and `branch` refuse with no_checkpoint naming the step, while a
branch from before that step still works."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until

FLOWS = '''
from pathlib import Path


def _count(counter, name):
    p = Path(counter, name)
    n = int(p.read_text()) + 1 if p.exists() else 1
    p.write_text(str(n))
    return n


def integrity(ctx, counter: str):
    """Three steps, each writing a 34 KiB file and returning a result too big to travel inline (an object);
    a last step that fails its first run."""
    total = 0
    for i in range(3):
        with ctx.step(f"h{i}") as node:
            _count(counter, f"h{i}")
            (ctx.workdir / f"data{i}.txt").write_text(f"line {i}\\n" * 5000)
            node.result = {"i": i, "blob": "x" * 20000}
        total += node.result["i"]
    with ctx.step("last") as node:
        if _count(counter, "last") == 1:
            raise RuntimeError("fail once")
        node.result = sorted(p.read_text()[:7] for p in ctx.workdir.glob("data*.txt"))
    return total
'''


def _ended(c: Any, sid: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(lambda: (lambda s: s if s["status"] in ("completed", "failed", "cancelled", "lost") else None)(
        c.session(sid)), timeout=timeout, interval=0.1, what=f"session {sid} ended")


def _failed_once(c: Any, tmp_path: Path, name: str) -> tuple[str, Path]:
    counter = tmp_path / f"counts-{name}"
    counter.mkdir()
    sid = c.start("./flows.py:integrity", params={"counter": str(counter)}, cwd=str(tmp_path), name=name)
    s = _ended(c, sid)
    assert s["status"] == "failed" and "fail once" in (s["reason"] or ""), s
    assert [cp["name"] for cp in c.checkpoints(sid)] == ["h0", "h1", "h2"]
    return sid, counter


def _object(home: Path, sid: str, digest: str) -> Path:
    return home / "sessions" / sid / "checkpoints" / "objects" / digest[:2] / digest


def _overwrite(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)
    path.write_bytes(data)


def _runs(counter: Path) -> dict[str, int]:
    return {p.name: int(p.read_text()) for p in sorted(counter.iterdir())}


def test_a_damaged_file_object_is_not_restored_and_the_resume_fails_naming_the_file(daemon, tmp_path: Path) -> None:
    """The object holding data0.txt overwritten, the work directory lost: the resumed runner checks each object
    against its sha256 while restoring, puts no garbage in place, and the session fails with an error naming
    data0.txt; no step runs on the damaged directory."""
    (tmp_path / "flows.py").write_text(FLOWS)
    with daemon.client() as c:
        sid, counter = _failed_once(c, tmp_path, "cora")
        data0 = ("line 0\n" * 5000).encode()
        _overwrite(_object(daemon.home, sid, hashlib.sha256(data0).hexdigest()), b"GARBAGE\n")
        work = daemon.home / "sessions" / sid / "work"
        shutil.rmtree(work)
        assert c.resume(sid)["steps_kept"] == 3  # the daemon does not hash file objects: the runner does
        s = wait_until(lambda: (lambda r: r if r["status"] in ("failed", "completed")
                                and "fail once" not in (r["reason"] or "") else None)(c.session(sid)),
                       timeout=60, interval=0.2, what="resumed session ended")
        assert s["status"] == "failed", s
        assert "damaged" in s["reason"] and "data0.txt" in s["reason"], s["reason"]
        assert not (work / "data0.txt").exists()
        assert not [p for p in work.rglob("*") if p.is_file()]  # nothing restored, nothing half-restored
        assert _runs(counter) == {"h0": 1, "h1": 1, "h2": 1, "last": 1}


@pytest.mark.parametrize("damage", ["corrupted", "deleted"])
def test_a_damaged_result_object_refuses_resume_and_later_branches_naming_the_step(daemon, tmp_path: Path,
                                                                                   damage: str) -> None:
    """Step h1's result object corrupted or deleted: `resume` is refused with no_checkpoint naming h1 (not
    "resumed (3 steps kept)" then a raw UnpicklingError/FileNotFoundError), and so is a branch from after h1;
    the session stays failed. A branch from h1 (its checkpoints before h1 are intact) runs h1 and h2 again and
    completes."""
    from labd.ipc import LabdError

    (tmp_path / "flows.py").write_text(FLOWS)
    with daemon.client() as c:
        sid, counter = _failed_once(c, tmp_path, f"cor-{damage}")
        h1 = c.checkpoints(sid)[1]
        assert h1["name"] == "h1" and h1.get("result")
        obj = _object(daemon.home, sid, h1["result"])
        if damage == "corrupted":
            _overwrite(obj, os.urandom(100))
        else:
            obj.unlink()
        with pytest.raises(LabdError) as err:
            c.resume(sid)
        assert err.value.code == "no_checkpoint" and "'h1'" in str(err.value), err.value
        assert ("damaged" if damage == "corrupted" else "gone") in str(err.value)
        with pytest.raises(LabdError) as err:
            c.branch(sid, "last")
        assert err.value.code == "no_checkpoint" and "'h1'" in str(err.value), err.value
        assert c.session(sid)["status"] == "failed"
        branch = c.branch(sid, "h1")["sessions"][0]["session"]
        s = _ended(c, branch)
        assert s["status"] == "completed", s
        assert _runs(counter) == {"h0": 1, "h1": 2, "h2": 2, "last": 2}
