"""Misbehaving workflows and failures around the daemon: nothing hangs, nothing leaks, the daemon serves on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from labd.ipc import LabdError
from tests.conftest import SMALL_MAX_MESSAGE, DaemonProc, alive, wait_until
from tests.integration.impostor import impostor_runner
from tests.integration.stuck import wait_explained


@pytest.fixture
def client(shared_daemon: DaemonProc) -> Iterator[Any]:
    """A client of the module's shared daemon (each test starts and asserts on its own sessions; tests that kill
    the daemon or its template, or read its counters, have a daemon of their own)."""
    with shared_daemon.client() as c:
        yield c


@pytest.fixture
def own_client(daemon: DaemonProc) -> Iterator[Any]:
    """A client of the test's own fresh daemon."""
    with daemon.client() as c:
        yield c


def test_an_event_the_store_refuses_becomes_a_rejection_and_the_daemon_serves_on(small_daemon) -> None:
    """A batch the database refuses (here: two DAG nodes with the same id, a primary-key violation) is
    written event by event: the refused event becomes ``event.rejected``, the others are stored, the seq
    stays gap-free, and a malformed hello (wrong types) is dropped without harm."""
    with small_daemon.client() as c:
        sid, codec, s = impostor_runner(c, max_message=SMALL_MAX_MESSAGE)
        s.send_multipart(codec.pack("hello", {"session": sid, "waiting_approvals": 5}))
        nxt = len([e for e in c.history(sid) if e["src"] == "runner"]) + 1
        evs = [[nxt, time.time(), "step.started", "nX", None, {"name": "first"}],
               [nxt + 1, time.time(), "step.started", "nX", None, {"name": "same node again"}],
               [nxt + 2, time.time(), "output", None, None, {"stream": "stdout", "text": "after\n"}]]
        s.send_multipart(codec.pack("events", {"session": sid, "events": evs}))
        acks = []
        wait_until(lambda: s.poll(100) and acks.append(codec.unpack(s.recv_multipart()).body)
                   or any(a.get("next") == nxt + 3 for a in acks), what="ack")
        tail = [e for e in c.history(sid) if e["src"] == "runner"][-3:]  # (the running session's samples left out)
        assert [e["kind"] for e in tail] == ["step.started", "event.rejected", "output"]
        assert "refused" in tail[1]["payload"]["reason"]
        events = list(c.history(sid))
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert c.status()["counters"]["store_refused_batches"] >= 1
        assert c.ping()["pid"] == small_daemon.proc.pid
        s.close(0)


def test_a_runner_left_stopped_by_a_dead_daemon_is_continued_on_adoption(daemon) -> None:
    """A CPU-limited runner may be SIGSTOPped when the daemon dies; the next daemon continues it."""
    with daemon.client() as c:
        sid = c.start("labd_testflows:ticker", params={"n": 30, "delay": 0.05}, cpu="80%")
        pid = wait_until(lambda: c.session(sid)["status"] == "running" and c.session(sid)["pid"])
    daemon.kill9()
    os.killpg(pid, signal.SIGSTOP)  # as the old daemon's throttle would have left it
    restarted = DaemonProc(daemon.home).start()
    try:
        with restarted.client() as c:
            final = c.wait(sid, timeout=60)
            # a rare 'lost' under a loaded suite (2026-12-04, cause not found yet): say what both daemons saw
            assert final["status"] == "completed", (final, [(e["kind"], e["payload"]) for e in c.history(sid)][-12:],
                                                    restarted.log()[-6000:], daemon.log()[-3000:])
    finally:
        restarted.stop()


def test_a_killed_template_is_replaced_and_the_daemon_does_not_spin(own_client, daemon) -> None:
    """kill -9 of the warm template: the daemon starts a new one (without burning CPU meanwhile) and
    the next session runs."""
    client = own_client
    old = client.status()["template_pid"]
    os.kill(old, signal.SIGKILL)
    new = wait_until(lambda: (p := client.status()["template_pid"]) not in (None, old) and p, what="new template")
    me = psutil.Process(daemon.proc.pid)
    before = sum(me.cpu_times()[:2])
    deadline = time.monotonic() + 2.0
    wait_until(lambda: time.monotonic() > deadline, timeout=5, interval=0.1)
    assert sum(me.cpu_times()[:2]) - before < 1.0, "the daemon spins"
    assert new != old
    sid = client.start("demo.count", params={"n": 2, "delay": 0})
    assert client.wait(sid, timeout=30)["status"] == "completed"


def test_multiprocessing_pools_in_a_workflow_can_be_terminated(client) -> None:
    """Workers forked from the runner do not inherit its SIGTERM handling, not even in the moment right after
    the fork (runner/forksafe.py): Pool.terminate() works. Should it hang, the failure shows the stacks."""
    sid = client.start("labd_testflows:pool_rounds", params={"rounds": 6})
    final = wait_explained(client, sid, timeout=60)
    assert final["status"] == "completed", final["reason"]


def test_fifos_and_device_links_in_the_workdir_do_not_hang_the_session(client) -> None:
    """The file scan never opens FIFOs or links: the session completes and records only the real file."""
    sid = client.start("labd_testflows:fifo_in_workdir")
    assert client.wait(sid, timeout=30)["status"] == "completed"
    assert [f["path"] for f in client.files(sid)] == ["real.txt"]


def test_processes_left_behind_by_a_session_are_cleaned_up(client) -> None:
    """A child the workflow left running is terminated once the session has ended."""
    sid = client.start("labd_testflows:leave_children")
    assert client.wait(sid, timeout=30)["status"] == "completed"
    child = next(client.history(sid, kinds=["session.finished"]))["payload"]["result"]
    wait_until(lambda: not alive(child),
               timeout=10, what="the leftover child to go")


def test_custom_approval_options_can_be_answered(client) -> None:
    """A workflow's own options (red/green) are answerable with `labd resolve`; other answers are refused."""
    sid = client.start("labd_testflows:custom_approval")
    ap = wait_until(lambda: client.approvals(sid))[0]
    assert ap["options"] == ["red", "green"]
    with pytest.raises(LabdError) as err:
        client.resolve(sid, "blue")
    assert err.value.code == "bad_decision"
    r = subprocess.run([sys.executable, "-m", "labd", "resolve", sid, "green"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    client.wait(sid, timeout=30)
    assert next(client.history(sid, kinds=["session.finished"]))["payload"]["result"] == "green"


def test_an_invalid_approval_request_fails_the_workflow_at_once(client) -> None:
    """An approval whose fields break the schema raises in the workflow instead of waiting forever."""
    sid = client.start("labd_testflows:bad_approval")
    final = client.wait(sid, timeout=30)
    assert final["status"] == "failed" and "approval.requested" in final["reason"]


def test_approvals_of_an_ended_session_expire(client) -> None:
    """Stopping a session that waits for a human expires its request: it is no longer pending."""
    sid = client.start("labd_testflows:custom_approval")
    wait_until(lambda: client.approvals(sid))
    client.stop(sid, grace=1)
    assert client.wait(sid, timeout=30)["status"] == "cancelled"
    assert client.approvals(sid) == []
    assert [a["status"] for a in client.approvals(sid, status="all")] == ["expired"]


def test_pause_right_after_start_is_not_lost(client) -> None:
    """A pause sent before the runner has connected is delivered once it does."""
    # The workflow runs while its channel connects (on its own thread): long enough that a loaded box cannot
    # finish it before the pause arrives (n=20 x 0.05 s did once, under a full suite plus benchmarks).
    sid = client.start("demo.count", params={"n": 100, "delay": 0.05})
    client.pause(sid)
    wait_until(lambda: client.session(sid)["status"] == "paused", timeout=30, what="paused")
    client.resume(sid)
    assert client.wait(sid, timeout=60)["status"] == "completed"


def test_ps_lists_running_sessions_even_behind_newer_finished_ones(client) -> None:
    """`labd ps` (no --all) shows live sessions however many newer ones have finished; a list cut at --limit says
    so, on stderr for a script too (`ps -q | xargs labd rm` cut a batch silently), and one that is whole does not
    (the daemon says whether more match: the CLI guessed from the count, and a list of exactly N looked cut);
    `--limit all` lists every match."""
    mark = f"cutlist-{os.getpid()}-"
    running = client.start("demo.sleep", params={"seconds": 60}, name=mark + "run")
    wait_until(lambda: client.session(running)["status"] == "running")
    done = client.start("demo.count", params={"n": 1, "delay": 0}, name=mark + "done")
    client.wait(done, timeout=30)

    def ps(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "labd", "ps", *args], capture_output=True, text=True,
                              timeout=60)

    live = ps("--name", mark)
    assert running in live.stdout and done not in live.stdout and "more match" not in live.stderr, live
    cut = ps("-a", "--name", mark, "--limit", "1")
    assert done in cut.stdout and running not in cut.stdout
    assert "(the newest 1; more match: --limit N or --limit all shows them)" in cut.stderr, cut.stderr
    for form in ("-q", "--json"):
        cut = ps("-a", "--name", mark, "--limit", "1", form)
        assert cut.returncode == 0 and "only the newest 1 listed; --limit N (or all) lists more" in cut.stderr, cut
        assert done in cut.stdout and running not in cut.stdout
    whole = ps("-a", "-q", "--name", mark, "--limit", "2")
    assert whole.stdout.split() == [done, running] and whole.stderr == "", whole
    assert ps("-a", "-q", "--name", mark, "--limit", "all").stdout.split() == [done, running]
    bad = ps("--limit", "0")
    assert bad.returncode == 2 and "argument --limit: must be a whole number from 1, or all, not '0'" in bad.stderr
    client.stop(running, grace=1)


def test_session_list_pages_through_every_session_once(client) -> None:
    """`session.list` says whether more sessions match than its `limit` (`more`) and where the next page starts
    (`next`, given back as `before`): paging two at a time lists each of a tag's sessions once, newest first, as one
    whole list does; the SDK's iter_sessions reads them all; a `before` that is no cursor is refused naming it."""
    tag = {"pages": str(os.getpid())}
    made = [client.start("demo.count", params={"n": 1, "delay": 0}, tags=tag) for _ in range(5)]
    for sid in made:
        client.wait(sid, timeout=60)
    whole = client.sessions_page(tags=tag, limit=10)
    assert [r["id"] for r in whole["sessions"]] == made[::-1] and whole["more"] is False and whole["next"] is None
    paged, before, pages = [], None, 0
    while True:
        page = client.sessions_page(tags=tag, limit=2, before=before)
        paged += [r["id"] for r in page["sessions"]]
        pages += 1
        if not page["more"]:
            break
        before = page["next"]
    assert paged == made[::-1] and pages == 3
    assert [r["id"] for r in client.iter_sessions(tags=tag, page=2)] == made[::-1]
    assert [r["id"] for r in client.sessions(tags=tag, limit=5)] == made[::-1]
    for bad in ("nonsense", "1.5/", "inf/abc", "1.5/../x", "x" * 5000):
        with pytest.raises(LabdError) as err:
            client.sessions_page(before=bad)
        assert err.value.code == "bad_request" and "before" in str(err.value), (bad, err.value)
