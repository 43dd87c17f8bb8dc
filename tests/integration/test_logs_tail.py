"""`labd logs --tail N` counts lines as `tail -n` does: a line written in several output events (fragments flushed
apart, a long line cut in 64 KiB chunks) is one line, shown whole; an unfinished last line is a line; `-t` stamps a
line once; a huge N means all the lines. One daemon and three sessions of `labd_testflows:fragmented_lines` for the
module: each fragment is its own `output` event (a step boundary sends what was written)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import module_home, running_daemon
from tests.integration.cli_support import labd

LONG_KIB = 1024  # a 1 MiB line: 16 chunks of 64 KiB at least

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def shared() -> Iterator[dict[str, Any]]:
    """One daemon for the module and the sessions the tests read (ended before any test starts)."""
    with module_home("ltail") as (base, env), running_daemon(base / "home") as d, d.client() as c:
        sids = {"plain": c.start("labd_testflows:fragmented_lines"),
                "unterminated": c.start("labd_testflows:fragmented_lines", params={"unterminated": True}),
                "long": c.start("labd_testflows:fragmented_lines", params={"long_kib": LONG_KIB})}
        for sid in sids.values():
            assert c.wait(sid, timeout=120)["status"] == "completed"
        yield {"env": env, "sids": sids, "history": {k: list(c.history(sid)) for k, sid in sids.items()}}


@pytest.fixture
def sessions(shared: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for k, v in shared["env"].items():  # over the per-test isolated_env: the CLI talks to the module's daemon
        monkeypatch.setenv(k, v)
    return shared


def _outputs(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["payload"] for e in history if e["kind"] == "output"]


def test_tail_counts_lines_not_output_fragments(sessions: dict[str, Any]) -> None:
    """A stdout line written as "progress: ", "10%", "...", "done" and "\\n" (five output events) is one line
    of `--tail`, printed whole; so is a stderr line written in two pieces around it (`--raw --tail N` is the last
    N lines of stdout and stderr together, each stream's to its own stream)."""
    sid = sessions["sids"]["plain"]
    texts = [p["text"] for p in _outputs(sessions["history"]["plain"])]
    assert texts[:8] == ["first line\n", "warn: ", "progress: ", "10%", "...", "done", "disk low\n", "\n"], texts
    expected = {1: ("last line\n", ""),
                2: ("progress: 10%...done\nlast line\n", ""),
                3: ("progress: 10%...done\nlast line\n", "warn: disk low\n"),
                4: ("first line\nprogress: 10%...done\nlast line\n", "warn: disk low\n"),
                5: ("first line\nprogress: 10%...done\nlast line\n", "warn: disk low\n")}
    for n, (out, err) in expected.items():
        r = labd("logs", "--raw", "--tail", str(n), sid)
        assert r.returncode == 0 and (r.stdout, r.stderr) == (out, err), (n, r)
    followed = labd("logs", "--raw", "-f", "--tail", "2", sid)  # the same history before following
    assert followed.returncode == 0 and followed.stdout == "progress: 10%...done\nlast line\n", followed


def test_tail_with_activity_lines_is_a_suffix_of_each_stream(sessions: dict[str, Any]) -> None:
    """With activity lines (no --raw), `--tail N` prints N lines in all, stdout's and stderr's together, and what
    each stream gets is the end of what `labd logs` prints on it, whole lines only, for every N (an activity line
    starts on a fresh line of stderr, so there it ends a stderr line left unfinished, in `logs` and `--tail` alike)."""
    sid = sessions["sids"]["plain"]
    full = labd("logs", sid)
    assert full.returncode == 0, full.stderr
    out_lines, err_lines = full.stdout.splitlines(keepends=True), full.stderr.splitlines(keepends=True)
    assert "progress: 10%...done\n" in out_lines  # whole; the stderr line is cut by the activity line after "warn: "
    assert err_lines.index("warn: \n") < err_lines.index("disk low\n")
    total = len(out_lines) + len(err_lines)
    for n in range(1, total + 2):
        r = labd("logs", "--tail", str(n), sid)
        assert r.returncode == 0, r.stderr
        out, err = r.stdout.splitlines(keepends=True), r.stderr.splitlines(keepends=True)
        assert len(out) + len(err) == min(n, total), (n, r)
        assert out == out_lines[len(out_lines) - len(out):] and err == err_lines[len(err_lines) - len(err):], (n, r)


def test_an_unterminated_last_line_is_a_line(sessions: dict[str, Any]) -> None:
    """Output that ends without a newline: its last line counts as a line, printed as it is (no newline added),
    and the line before it is the whole line, not the newline that ended it."""
    sid = sessions["sids"]["unterminated"]
    assert labd("logs", "--raw", "--tail", "1", sid).stdout == "last line"
    assert labd("logs", "--raw", "--tail", "2", sid).stdout == "progress: 10%...done\nlast line"


def test_a_long_line_in_many_chunks_is_one_whole_line(sessions: dict[str, Any]) -> None:
    """A 1 MiB line arrives as many output events (chunks of at most 64 KiB); `--tail 2` prints it whole with the
    line after it, and `--tail 1` only the line after it."""
    sid = sessions["sids"]["long"]
    chunks = [p["text"] for p in _outputs(sessions["history"]["long"]) if p["text"].startswith("x")]
    assert len(chunks) >= 16, len(chunks)  # the premise: the long line is many events
    long_line = "x" * (LONG_KIB * 1024 - 1) + "\n"
    one = labd("logs", "--raw", "--tail", "1", sid)
    assert one.returncode == 0 and one.stdout == "last line\n"
    two = labd("logs", "--raw", "--tail", "2", sid)
    assert two.returncode == 0 and two.stdout == long_line + "last line\n", len(two.stdout)


def test_timestamps_stamp_each_line_once_with_the_time_it_started(sessions: dict[str, Any]) -> None:
    """`-t --tail N` prints N stamped lines; a line written in fragments carries the time of its first fragment
    (no stamp of its own for the newline that ended it)."""
    sid = sessions["sids"]["plain"]
    outputs = [e for e in sessions["history"]["plain"] if e["kind"] == "output"]

    def stamp(text: str) -> str:
        (ev,) = [e for e in outputs if e["payload"]["text"] == text]
        return datetime.fromtimestamp(ev["ts"]).strftime("%H:%M:%S.%f")[:-3]

    r = labd("logs", "--raw", "-t", "--tail", "3", sid)
    assert r.returncode == 0, r.stderr
    progress, last = stamp("progress: "), stamp("last line\n")
    assert r.stdout == f"{progress} progress: 10%...done\n{last} last line\n"
    assert r.stderr == f"{stamp('warn: ')} warn: disk low\n"
    assert all(re.match(r"\d\d:\d\d:\d\d\.\d{3} \S", ln) for ln in r.stdout.splitlines())


def test_a_huge_tail_means_all_lines(sessions: dict[str, Any]) -> None:
    """`--tail` with more lines than a machine word counts prints every line (as without --tail), with and
    without -f, and no traceback."""
    sid = sessions["sids"]["plain"]
    everything = labd("logs", sid)
    for args in (("--tail", "99999999999999999999"), ("-n", str(2**63)), ("-f", "--tail", "1" + "0" * 30)):
        r = labd("logs", *args, sid)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r)
        assert (r.stdout, r.stderr) == (everything.stdout, everything.stderr), args
