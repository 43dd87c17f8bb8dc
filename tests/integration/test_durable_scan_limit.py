"""A work directory larger than a scan reaches (labd.runner.files.MAX_FILES) survives a resume: the checkpoint
made from the truncated scan is marked ``partial``, the daemon's seed says so, and the runner's restore then
writes back what the manifest holds and removes nothing it lacks. Found by an attack review: the resume removed
every file past the 20,000th in walk order (``z/results.csv`` among them)."""

from __future__ import annotations

from pathlib import Path

import orjson

from labd.runner.files import MAX_FILES
from tests.integration.test_durable import _ended, _events

_MANY = MAX_FILES + 500

#: step "many" writes _MANY tiny files under a/ and z/results.csv; step "after" fails its first run (a marker in a
#: dot directory, neither tracked nor restored, tells) after writing junk.txt
_FLOW = f"""\
def big(ctx):
    w = ctx.workdir
    marker = w / ".state" / "failed-once"
    with ctx.step("many"):
        (w / "a").mkdir()
        for i in range({_MANY}):
            (w / "a" / f"f{{i:05}}").write_bytes(b"%d" % i)
        (w / "z").mkdir()
        (w / "z" / "results.csv").write_text("x,y\\n1,2\\n")
    with ctx.step("after"):
        if not marker.exists():
            marker.parent.mkdir(exist_ok=True)
            marker.write_text("")
            (w / "junk.txt").write_text("junk")
            raise RuntimeError("fails once")
        (w / "done.txt").write_text("done")
    return "ok"
"""


def test_a_resume_from_a_partial_checkpoint_keeps_every_file(daemon, tmp_path: Path) -> None:
    """Step 1 writes more files than MAX_FILES plus z/results.csv; step 2 fails once; `resume` completes the
    session and afterwards every one of those files is still there with its content (z/results.csv included).
    Step 1's ``step.checkpoint`` has ``partial: true``; the restore removed nothing; the session has exactly one
    warning that scans are truncated (the resumed runner does not repeat it; its restore says it restored a
    partial checkpoint)."""
    (tmp_path / "big_flow.py").write_text(_FLOW)
    with daemon.client() as c:
        sid = c.start(f"{tmp_path / 'big_flow.py'}:big")
        assert _ended(c, sid, timeout=180)["status"] == "failed"
        c.resume(sid)
        assert _ended(c, sid, timeout=180)["status"] == "completed", c.session(sid)["reason"]
        work = Path(c.session(sid)["workdir"])
        names = sorted(p.name for p in (work / "a").iterdir())
        assert names == [f"f{i:05}" for i in range(_MANY)]
        assert all((work / "a" / f"f{i:05}").read_bytes() == b"%d" % i for i in range(0, _MANY, 97))
        assert (work / "a" / f"f{_MANY - 1:05}").read_bytes() == b"%d" % (_MANY - 1)
        assert (work / "z" / "results.csv").read_text() == "x,y\n1,2\n"
        assert (work / "done.txt").read_text() == "done"
        cps = [orjson.loads(p) for _s, _src, _node, p in _events(daemon.home, sid, "step.checkpoint")]
        first = next(cp for cp in cps if cp["name"] == "many")
        assert first["partial"] is True and first["files"] == MAX_FILES
        restored = [orjson.loads(p) for _s, _src, _node, p in _events(daemon.home, sid, "checkpoint.restored")]
        assert len(restored) == 1 and restored[0]["removed"] == 0, restored
        logs = [orjson.loads(p) for _s, _src, _node, p in _events(daemon.home, sid, "log")]
        truncated = [lg for lg in logs if lg.get("level") == "warning" and lg.get("logger") == "labd.runner.files"]
        assert len(truncated) == 1 and f"more than {MAX_FILES} files" in truncated[0]["event"], truncated
        partial = [lg for lg in logs if lg.get("logger") == "labd.runner.durable" and "partial" in lg["event"]]
        assert len(partial) == 1, partial
