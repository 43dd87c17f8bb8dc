"""`labd search` filters and bounds, and what `labd show` / `labd ps` / `labd kill` say of sessions in the run
queue, against a real daemon and real runners."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labd.ipc import LabdError
from tests.conftest import running_daemon, wait_until
from tests.integration.cli_support import labd

pytestmark = pytest.mark.timeout(240)

FLOWS = '''
def many(ctx, n: int = 1000):
    for i in range(n):
        with ctx.step(f"quokka {i}"):
            pass
    return n

def failing(ctx):
    with ctx.step("quokka with a much longer title than any other step of these sessions has"):
        pass
    raise RuntimeError("numbat")
'''


def test_search_filters_find_matches_that_rank_below_other_sessions_hits(daemon, tmp_path: Path) -> None:
    """A session with 1000 steps `quokka N` (completed) and a failed one whose step `quokka with a much longer
    title ...` ranks below all of them: `--status failed`, `--workflow` and both together find the failed one's step
    (before: the filter was applied to the best limit*5 hits of all sessions: `no matches` unless --limit 500);
    the completed one's hits come back up to the limit."""
    (tmp_path / "quokkas.py").write_text(FLOWS)
    flows = str(tmp_path / "quokkas.py")
    with daemon.client() as c:
        many, bad = c.start(f"{flows}:many"), c.start(f"{flows}:failing")
        assert c.wait(many, timeout=120)["status"] == "completed"
        assert c.wait(bad, timeout=60)["status"] == "failed"
        wait_until(lambda: c.search("much longer title", types=["step"]) and c.search("quokka 999", types=["step"]),
                   timeout=60, what="both sessions' steps indexed")
        assert bad not in {h["session_id"] for h in c.search("quokka", types=["step"], limit=100)}  # ranks below
        for filters in ({"status": ["failed"]}, {"workflow": f"{flows}:failing"},
                        {"status": ["failed"], "since": "1h"}):
            hits = c.search("quokka", types=["step"], **filters)
            assert [h["session_id"] for h in hits] == [bad], filters
            assert hits[0]["title"].startswith("quokka with a much longer title")
        done = c.search("quokka", types=["step"], status=["completed"], limit=7)
        assert len(done) == 7 and {h["session_id"] for h in done} == {many}
    cli = labd("search", "quokka", "--status", "failed")
    assert cli.returncode == 0 and bad in cli.stdout and "no matches" not in cli.stdout, cli.stdout + cli.stderr


def test_search_refuses_queries_over_twenty_words_and_text_json_cannot_carry(daemon) -> None:
    """All words of a query must match, so a query with more than 20 different words is refused (bad_request, the
    limit in the message) instead of its 21st word on being dropped silently; repeated words count once. A string
    with a lone surrogate is bad_request naming the field, from the SDK, not orjson's TypeError."""
    words = [f"w{i}x" for i in range(21)]
    with daemon.client() as c:
        sid = c.start("demo.count", params={"n": 1}, name="w0x-w1x")
        c.wait(sid, timeout=60)
        wait_until(lambda: c.search("w0x w1x"), timeout=30, what="indexed")
        with pytest.raises(LabdError) as err:
            c.search(" ".join(["w0x", "w1x", *words[2:]]))  # the first two match: the rest must too
        assert err.value.code == "bad_request" and "21 different words" in err.value.message
        assert "at most 20" in err.value.message
        assert c.search(" ".join(["w0x", "w1x"] * 30)) != []  # 60 words, 2 different ones
        with pytest.raises(LabdError) as err:
            c.request("search", query=" ".join(words))  # the daemon refuses it too (whatever the client checks)
        assert err.value.code == "bad_request" and "at most 20" in err.value.message
        assert err.value.details == {"max_words": 20}
        with pytest.raises(LabdError) as err:
            c.search("\ud800")
        assert err.value.code == "bad_request" and "'query'" in err.value.message and "UTF-8" in err.value.message
        with pytest.raises(LabdError) as err:
            c.start("demo.count", params={"label": "ok \udcff"})
        assert err.value.code == "bad_request" and "'params.label'" in err.value.message
    cli = labd("search", *words)
    assert cli.returncode == 2 and "at most 20" in cli.stderr and "Traceback" not in cli.stderr, cli.stderr


def _line(out: str, sid: str) -> str:
    found = [line for line in out.splitlines() if line.startswith(sid)]
    assert found, out
    return found[0]


def test_show_ps_and_kill_of_queued_sessions(isolated_env: Path) -> None:
    """Under max_sessions = 1 with the slot taken: `labd ps` shows each waiting session's place (`queued #1`,
    `queued #2`); `labd show` says `queued for ...` (not a growing `ran ...`) and shows the `procs` limit; `labd
    kill` of a queued one says it was taken off the queue; `labd show` of one stopped while queued says `never ran`
    (before: `ran 17s`); the running one `ran ...`."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text("[daemon]\nmax_sessions = 1\n")
    with running_daemon(isolated_env) as d, d.client() as c:
        blocker = c.start("demo.sleep", params={"seconds": 120})
        wait_until(lambda: c.session(blocker)["status"] == "running", timeout=60, what="blocker running")
        first = labd("run", "demo.sleep", "-p", "seconds=60", "--procs", "7").stdout.strip()
        second = labd("run", "demo.sleep", "-p", "seconds=60").stdout.strip()
        wait_until(lambda: c.session(second)["status"] == "queued", timeout=30, what="second queued")
        ps = labd("ps").stdout
        assert "queued #1" in _line(ps, first) and "queued #2" in _line(ps, second), ps
        show = labd("show", first).stdout
        assert "queued for " in show and "ran " not in show, show
        assert "procs 7" in show, show
        killed = labd("kill", second)
        assert killed.returncode == 0 and f"{second} taken off the queue" in killed.stdout, killed.stdout
        assert "killing" not in killed.stdout
        assert json.loads(labd("kill", first, "--json").stdout)["was_queued"] is True
        for sid in (first, second):
            wait_until(lambda sid=sid: c.session(sid)["status"] == "cancelled", timeout=30, what="cancelled")
            show = labd("show", sid).stdout
            assert "never ran (ended " in show and "ran " not in show.replace("never ran", ""), show
        assert "ran " in labd("show", blocker).stdout
        c.kill(blocker)
