"""`labd logs [-f]` of several sessions (`labd logs -f A B`, `--tag K=V`): one stream, each line prefixed with its
session, whole lines only (two sessions printing at once never share a line); the exit status says whether all
completed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.integration.cli_support import labd

pytestmark = pytest.mark.timeout(180)

FLOWS = textwrap.dedent('''
    import sys, time

    def halves(ctx, word: str = "x", n: int = 5, gate: str = ""):
        """Each line written in two halves, a pause between them: another session's line lands in between."""
        import pathlib
        if gate:  # wait until the test's follower runs
            while not pathlib.Path(gate).exists():
                time.sleep(0.02)
        for i in range(n):
            sys.stdout.write(f"{word}-{i}-first-half ")
            sys.stdout.flush()
            time.sleep(0.05)
            sys.stdout.write(f"{word}-{i}-second-half\\n")
            sys.stdout.flush()
        sys.stdout.write(f"{word} unfinished")  # no newline at the end
        return n

    def broken(ctx, gate: str = ""):
        import pathlib
        while gate and not pathlib.Path(gate).exists():
            time.sleep(0.02)
        print("broken starts")
        raise ValueError("it broke")
''')


def _start(tmp_path: Path, fn: str, *args: str) -> str:
    done = labd("run", f"./flows.py:{fn}", *args, cwd=tmp_path)
    assert done.returncode in ((0, 1) if "--wait" in args else (0,)), done.stderr
    return done.stdout.strip()


def test_following_several_sessions_prints_whole_prefixed_lines_and_exits_with_how_they_ended(
        shared_daemon, tmp_path: Path) -> None:
    """Two sessions writing half lines at the same moment, followed together by tag: every stdout line is one
    session's whole line, prefixed with its name; an unfinished last line is printed at the session's end; a
    session that failed makes the exit status 1 and is said on stderr."""
    (tmp_path / "flows.py").write_text(FLOWS)
    gate = tmp_path / "gate"
    tag = f"batch={tmp_path.name}"
    _start(tmp_path, "halves", "-p", "word=alpha", "-p", f"gate={gate}", "--name", "alpha", "--tag", tag)
    _start(tmp_path, "halves", "-p", "word=beta", "-p", f"gate={gate}", "--name", "beta", "--tag", tag)
    proc = subprocess.Popen([sys.executable, "-m", "labd", "logs", "-f", "--tag", tag], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()  # --tag takes the sessions live when it starts: they wait for it
    assert "following 2 live sessions" in first, first
    gate.touch()  # both print at once, now
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    for word, label in (("alpha", "alpha | "), ("beta", "beta  | ")):
        mine = [line for line in lines if line.startswith(label)]
        assert mine == [f"{label}{word}-{i}-first-half {word}-{i}-second-half" for i in range(5)] + [
            f"{label}{word} unfinished"], out
    assert len(lines) == 12, out

    failed = _start(tmp_path, "broken", "-p", f"gate={gate}", "--name", "broken")
    fine = _start(tmp_path, "halves", "-p", "word=gamma", "-p", "n=1", "--name", "gamma")
    done = labd("logs", "-f", failed, fine)
    assert done.returncode == 1, done.stderr
    assert "broken | broken starts" in done.stdout and "gamma  | gamma-0-first-half gamma-0-second-half" in done.stdout
    assert "broken | == ended failed" in done.stderr and "ValueError: it broke" in done.stderr


def test_the_history_of_several_sessions_one_after_the_other_with_tail(shared_daemon, tmp_path: Path) -> None:
    """Without -f: each session's history in turn, prefixed; ``--tail N`` keeps each one's last N lines; two
    sessions of the same name are told apart by their ids; a reference to no session is the usual error."""
    (tmp_path / "flows.py").write_text(FLOWS)
    a = _start(tmp_path, "halves", "-p", "word=one", "-p", "n=3", "--name", "same")
    b = _start(tmp_path, "halves", "-p", "word=two", "-p", "n=3", "--name", "same")
    for sid in (a, b):
        wait_until(lambda sid=sid: json.loads(labd("show", sid, "--json").stdout)["status"] == "completed",
                   timeout=60, what="the session's end")
    both = labd("logs", a, b, "--raw", "--tail", "2")
    assert both.returncode == 0, both.stderr
    assert both.stdout.splitlines() == [f"{a} | one-2-first-half one-2-second-half", f"{a} | one unfinished",
                                        f"{b} | two-2-first-half two-2-second-half", f"{b} | two unfinished"]
    tag = f"t={tmp_path.name}"
    _start(tmp_path, "halves", "-p", "word=three", "-p", "n=1", "--tag", tag, "--name", "three", "--wait")
    _start(tmp_path, "broken", "--tag", tag, "--name", "broke", "--wait")
    batch = labd("logs", "-f", "--tag", tag, "--raw")  # a batch that has ended: its logs, and how it ended
    assert batch.returncode == 1 and "following" not in batch.stderr, batch.stderr
    assert batch.stdout.splitlines() == ["three | three-0-first-half three-0-second-half", "three | three unfinished",
                                         "broke | broken starts"]
    assert "broke | == ended failed" in batch.stderr
    missing = labd("logs", a, "nosuchsession")
    assert missing.returncode == 2 and "nosuchsession" in missing.stderr
    assert labd("logs").returncode == 2
