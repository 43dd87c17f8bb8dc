"""Durable sessions against a hostile work directory: a resume never writes or removes anything outside the work
directory through symlinks the session's code planted (found by an attack review: `labd resume` wrote a
checkpointed file into a victim directory, and removed a victim's directory)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import orjson

from tests.integration.cli_support import labd
from tests.integration.test_durable import _ended, _events

#: step a writes sub/f.txt and sub/data (checkpointed); step b, the first time, replaces sub by a symlink to the
#: victim directory and fails (what sandboxed code can do: it may write in its work directory); the marker is in a
#: dot directory, which is neither tracked nor restored
_FLOW = """\
import os
import shutil

def hostile(ctx, victim: str):
    w = ctx.workdir
    marker = w / ".state" / "planted"
    with ctx.step("a"):
        (w / "sub").mkdir(exist_ok=True)
        (w / "sub" / "f.txt").write_text("from a")
        (w / "sub" / "data").write_text("a file named data")
    with ctx.step("b"):
        if not marker.exists():
            marker.parent.mkdir(exist_ok=True)
            marker.write_text("")
            shutil.rmtree(w / "sub")
            os.symlink(victim, w / "sub")
            raise RuntimeError("b plants sub -> victim and fails")
        (w / "out.txt").write_text("b done")
    return "ok"
"""


def _state(top: Path) -> dict[str, Any]:
    """Per entry of a tree (the top included): type and mode, mtime, content of files."""
    out: dict[str, Any] = {".": (top.stat().st_mode, top.stat().st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(top))] = (st.st_mode, st.st_mtime_ns, p.read_bytes() if p.is_file() else None)
    return out


def test_a_resume_never_writes_through_a_symlink_the_session_planted(daemon, tmp_path: Path) -> None:
    """Step a checkpoints sub/f.txt and sub/data; the failing step b replaces ``sub`` with a symlink to a victim
    directory holding f.txt and a directory data/. `resume` (the SDK's) restores step a's files into a real
    ``sub`` in the work directory: the victim's files, directory and mtimes are untouched, and the resumed session
    completes with exactly the manifest's files (and step b's)."""
    victim = tmp_path / "victim"
    (victim / "data").mkdir(parents=True)
    (victim / "f.txt").write_text("victim's own f")
    (victim / "data" / "keep.bin").write_bytes(b"victim's data")
    before = _state(victim)
    (tmp_path / "hostile_flow.py").write_text(_FLOW)
    with daemon.client() as c:
        sid = c.start(f"{tmp_path / 'hostile_flow.py'}:hostile", params={"victim": str(victim)})
        s = _ended(c, sid)
        assert s["status"] == "failed" and "plants sub" in (s["reason"] or ""), s["reason"]
        work = Path(s["workdir"])
        assert (work / "sub").is_symlink()
        assert [cp["name"] for cp in c.checkpoints(sid)] == ["a"]
        c.resume(sid, reason="after the plant")
        assert c.wait(sid, timeout=60)["status"] == "completed", c.session(sid)["reason"]
    assert _state(victim) == before
    assert (work / "sub").is_dir() and not (work / "sub").is_symlink()
    assert (work / "sub" / "f.txt").read_text() == "from a"
    assert (work / "sub" / "data").read_text() == "a file named data"
    assert (work / "out.txt").read_text() == "b done"
    tracked = sorted(str(p.relative_to(work)) for p in work.rglob("*")
                     if p.is_file() and not any(part.startswith(".") for part in p.relative_to(work).parts))
    assert tracked == ["out.txt", "sub/data", "sub/f.txt"]


#: step one writes a file whose name is not UTF-8; step two, the first time, deletes it, writes another such file
#: and fails; resumed, it completes
_NAMES_FLOW = """\
import os

BAD = b"bad\\xff\\xfename.txt"

def names(ctx):
    w = os.fsencode(ctx.workdir)
    marker = ctx.workdir / ".state" / "failed-once"
    with ctx.step("one"):
        with open(os.path.join(w, BAD), "wb") as f:
            f.write(b"exact \\xff content")
        (ctx.workdir / "plain.txt").write_text("plain")
    with ctx.step("two"):
        if not marker.exists():
            marker.parent.mkdir(exist_ok=True)
            marker.write_text("")
            os.remove(os.path.join(w, BAD))
            with open(os.path.join(w, b"junk\\xff"), "wb") as f:
                f.write(b"junk")
            raise RuntimeError("two fails once")
        (ctx.workdir / "out.txt").write_text("two done")
    return "ok"
"""


def test_a_file_name_that_is_not_utf8_survives_a_failure_and_a_resume(daemon, tmp_path: Path) -> None:
    """A step writes ``bad\\xff\\xfename.txt`` (not UTF-8): the session does not fail for it (it fails only where
    its step two raises), the resume restores that file with its exact name and content (step two's failed run had
    deleted it) and removes step two's stray non-UTF-8 file, and completes; `labd files` lists the name in its
    display form, and the file events carry the exact bytes as ``path_b64``. Before, the first scan failed the
    session (TypeError: str is not valid UTF-8), and every resume the same way."""
    (tmp_path / "names_flow.py").write_text(_NAMES_FLOW)
    bad = b"bad\xff\xfename.txt"
    with daemon.client() as c:
        sid = c.start(f"{tmp_path / 'names_flow.py'}:names")
        s = _ended(c, sid)
        assert s["status"] == "failed" and "two fails once" in (s["reason"] or ""), s["reason"]
        assert [cp["name"] for cp in c.checkpoints(sid)] == ["one"]
        c.resume(sid)
        assert c.wait(sid, timeout=60)["status"] == "completed", c.session(sid)["reason"]
        work = os.fsencode(s["workdir"])
        on_disk = {n: Path(os.fsdecode(os.path.join(work, n))).read_bytes() for n in os.listdir(work)
                   if not n.startswith(b".")}
        assert on_disk == {bad: b"exact \xff content", b"plain.txt": b"plain", b"out.txt": b"two done"}
        files = c.files(sid)
        shown = [(f["path"], f["change"]) for f in files if f["path"].startswith(("bad", "junk"))]
        assert shown == [("bad\\xff\\xfename.txt", "created"),  # step one
                         ("junk\\xff", "created"), ("bad\\xff\\xfename.txt", "deleted"),  # step two's failed run
                         ("bad\\xff\\xfename.txt", "created"), ("junk\\xff", "deleted")]  # the resume's restore
        assert [f["restored"] for f in files if f["path"].startswith(("bad", "junk"))] == [False] * 3 + [True] * 2
        listing = labd("files", sid)
        assert listing.returncode == 0 and "bad\\xff\\xfename.txt" in listing.stdout, listing
    created = [orjson.loads(p) for *_r, p in _events(daemon.home, sid, "file.created")]
    assert base64.b64encode(bad).decode() in {p.get("path_b64") for p in created}
