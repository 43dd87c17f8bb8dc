"""Full-text search (`search` / `labd search`): sessions are found by a word in one agent message, a file by
its name, a step by its name; filters by status and workflow are honoured; bad input is refused; deleted
sessions leave the index; the index is rebuilt from the record if it is lost."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import running_daemon, wait_until

pytestmark = pytest.mark.timeout(180)


def _indexed(c, query: str, own: set[str], **kw) -> list[dict]:
    return wait_until(lambda: _hits(c, query, own, **kw), timeout=30, what=f"search hits for {query!r}")


def _hits(c, query: str, own: set[str], **kw) -> list[dict]:
    """The hits in sessions ``own`` (the module's shared daemon holds other tests' sessions too)."""
    return [h for h in c.search(query, **kw) if h["session_id"] in own]


def test_find_a_session_by_a_word_in_an_agent_message_and_a_file_by_name(shared_daemon) -> None:
    """planning_and_control on the offline model: the reviewer's word 'APPROVED' finds the session (type
    message); the file step_2.json is found by 'step_2'; a step by its name; nothing for a word nobody wrote."""
    with shared_daemon.client() as c:
        sid = c.start("planning_and_control", params={"task": "Fit the zebrafish growth curve"})
        other = c.start("demo.count", params={"n": 1})
        own = {sid, other}
        for s in (sid, other):
            assert c.wait(s, timeout=90)["status"] == "completed"
        msg = _indexed(c, "approved", own, types=["message"])
        assert {h["session_id"] for h in msg} == {sid} and msg[0]["title"] == "plan_reviewer"
        files = _indexed(c, "step_2", own, types=["file"])  # the file comes later in the session than the review
        assert [h["title"] for h in files] == ["step_2.json"] and files[0]["session_id"] == sid
        assert _hits(c, "zebrafish", own, types=["session"])[0]["session_id"] == sid  # the task text
        steps = _indexed(c, "summarise findings", own, types=["step"])  # step 3 starts after the file was indexed
        assert steps and steps[0]["node_id"] and steps[0]["session_workflow"] == "planning_and_control"
        assert _hits(c, "xylophoneqq", own) == []


def test_filters_and_bad_input(shared_daemon) -> None:
    """status / workflow / since filters are applied, not ignored; an empty query or unknown type is refused."""
    from labd.ipc import LabdError

    with shared_daemon.client() as c:
        ok = c.start("demo.count", params={"n": 1}, name="alpha-run")
        bad = c.start("demo.fail", name="alpha-fail")
        own = {ok, bad}
        for s in (ok, bad):
            c.wait(s, timeout=60)
        _indexed(c, "alpha", own, types=["session"])
        wait_until(lambda: len(_hits(c, "alpha", own, types=["session"])) == 2, timeout=30, what="both indexed")
        assert {h["session_id"] for h in _hits(c, "alpha", own, status=["failed"])} == {bad}
        assert {h["session_id"] for h in _hits(c, "alpha", own, workflow="demo.count")} == {ok}
        assert _hits(c, "alpha", own, since="1d") and _hits(c, "alpha", own, since=0.0, workflow="nope") == []
        # a cutoff after both sessions were created leaves them out (since alone decides here)
        assert _hits(c, "alpha", own, since=time.time() + 3600) == []
        assert {h["session_id"] for h in _hits(c, "alpha", own, since=time.time() - 3600)} == own
        for body in ({"query": "  "}, {"query": "x", "types": ["nonsense"]}, {"query": "x", "since": "soon"}):
            with pytest.raises(LabdError) as err:
                c.request("search", **body)
            assert err.value.code == "bad_request"


def test_deleted_sessions_leave_the_index_and_a_lost_index_is_rebuilt(isolated_env: Path) -> None:
    """`rm` removes a session's documents; deleting search.db while the daemon is down loses nothing: the next
    daemon re-indexes the record. (A daemon of its own: it is restarted with its index deleted.)"""
    with running_daemon(isolated_env) as d, d.client() as c:
        a = c.start("demo.count", params={"n": 1}, name="gamma-one")
        b = c.start("demo.count", params={"n": 1}, name="gamma-two")
        for s in (a, b):
            c.wait(s, timeout=60)
        wait_until(lambda: len(c.search("gamma")) == 2, timeout=30, what="indexed")
        c.rm(a)
        assert [h["session_id"] for h in c.search("gamma")] == [b]
    (isolated_env / "search.db").unlink()
    for extra in ("search.db-wal", "search.db-shm"):
        (isolated_env / extra).unlink(missing_ok=True)
    with running_daemon(isolated_env) as d, d.client() as c:
        assert [h["session_id"] for h in _indexed(c, "gamma", {a, b})] == [b]


def test_cli_search(shared_daemon) -> None:
    """`labd search` prints the hits with their session, and `--json` the stable reply shape; a list cut at
    `--limit` says that more may match (it looked complete)."""
    import json

    word = f"delta{secrets.token_hex(4)}"  # a word no other test's session on the shared daemon holds
    with shared_daemon.client() as c:
        sid = c.start("demo.count", params={"n": 1}, name=f"{word}-cli")
        c.wait(sid, timeout=60)
        _indexed(c, word, {sid})
    env = {**os.environ, "LABD_HOME": str(shared_daemon.home)}
    out = subprocess.run([sys.executable, "-m", "labd", "search", word], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0 and sid in out.stdout
    out = subprocess.run([sys.executable, "-m", "labd", "search", word, "--json"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert json.loads(out.stdout)[0]["session_id"] == sid
    cut = subprocess.run([sys.executable, "-m", "labd", "search", word, "--limit", "1"], capture_output=True,
                         text=True, env=env, timeout=60)  # as many hits as asked for: more may match, and it says so
    assert cut.returncode == 0 and "more may match: --limit N" in cut.stderr
    assert "more may match" not in out.stderr


def test_a_failed_sessions_error_is_found_by_its_words(shared_daemon) -> None:
    """The error a session failed with is found (type ``error``): its step's and the session's, with the traceback;
    a session that completed makes none."""
    word = f"flux{secrets.token_hex(4)}"
    with shared_daemon.client() as c:
        failed = c.start("demo.fail", params={"message": f"the {word} capacitor broke"})
        fine = c.start("demo.count", params={"n": 1, "label": word})
        for s in (failed, fine):
            c.wait(s, timeout=60)
        errors = wait_until(lambda: _hits(c, word, {failed, fine}, types=["error"]) if len(
            _hits(c, word, {failed, fine}, types=["error"])) >= 2 else None, timeout=30, what="both error documents")
        assert {h["session_id"] for h in errors} == {failed} and {h["session_status"] for h in errors} == {"failed"}
        assert {bool(h["node_id"]) for h in errors} == {True, False}  # the step's, and the session's
        assert _hits(c, "RuntimeError capacitor", {failed}, types=["error"])
        assert _hits(c, "demo.py", {failed}, types=["error"])  # a word of the traceback


INTERLEAVED = """
def interleaved(ctx, rounds: int = 30, ticks: int = 3000):
    for r in range(rounds):
        for i in range(ticks):
            ctx.emit("tick", i)
        print("round", r)
        with ctx.step(f"stepmark {r}"):
            pass
        ctx.sleep(0.05)
    return rounds
"""


def test_every_step_is_found_among_bulk_events_indexed_while_the_session_runs(shared_daemon, tmp_path: Path) -> None:
    """A session that writes bulk events (ticks, output) with a step now and then, for a few seconds, while the
    indexer runs beside it: ingest tells the indexer which new rows hold nothing indexable (store.search.IndexHints),
    and not one of the steps among them is missed."""
    (tmp_path / "bulkflows.py").write_text(INTERLEAVED)
    with shared_daemon.client() as c:
        sid = c.start("./bulkflows.py:interleaved", cwd=str(tmp_path))
        assert c.wait(sid, timeout=120)["status"] == "completed"
        wait_until(lambda: len(_hits(c, "stepmark", {sid}, types=["step"], limit=100)) >= 30, timeout=30,
                   what="every step indexed")
        hits = _hits(c, "stepmark", {sid}, types=["step"], limit=100)
        assert sorted(h["title"] for h in hits) == sorted(f"stepmark {r}" for r in range(30))
        assert {h["session_id"] for h in hits} == {sid}

