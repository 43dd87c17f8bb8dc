"""Daemon and store outages longer than a runner waits: the session's record stays complete and its
status is its own outcome. The runner's ack wait is shortened with ``LABD_RUNNER_FLUSH_TIMEOUT`` (2 s here
instead of 30 s), so "longer than the runner waits" needs seconds, not minutes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from labd.ipc import LabdError
from tests.conftest import DaemonProc, kill_runners, running_daemon, wait_until
from tests.fault.conftest import RUNNER_FLUSH_ENV, STORE_LOCK_ENV, figures, outage_seconds

pytestmark = pytest.mark.fault

N = 40


def _check_complete(events: list[dict[str, Any]], n: int = N) -> tuple[list[int], list[str]]:
    ticks = [e["payload"]["data"]["i"] for e in events if e["kind"] == "custom"]
    lines = "".join(e["payload"]["text"] for e in events if e["kind"] == "output").splitlines()
    seqs = [e["seq"] for e in events]
    runner = [e["src_seq"] for e in events if e["src"] == "runner"]  # the record names the runner "runner"
    assert seqs == list(range(1, len(seqs) + 1)), "history has gaps"
    assert len(runner) > n, f"only {len(runner)} runner events"  # the ticks alone are n
    assert runner == list(range(1, len(runner) + 1)), "runner events not exactly once"
    assert ticks == list(range(n)), f"ticks lost or duplicated: {len(ticks)} of {n}"
    assert lines == [f"tick {i}" for i in range(n)], f"lines lost: {len(lines)} of {n}"
    assert events[-1]["kind"] == "session.ended", "events committed after session.ended"
    return ticks, lines


def _daemon_outage(home: Path, outage: float, env: dict[str, str] | None = None) -> None:
    env = RUNNER_FLUSH_ENV if env is None else env
    with running_daemon(home, extra_env=env) as d:
        with d.client() as c:
            sid = c.start("labd_testflows:ticker", params={"n": N, "delay": 0.05})
            wait_until(lambda: len([e for e in c.history(sid) if e["kind"] == "custom"]) >= 3, timeout=30,
                       what="first ticks")
            pid = c.session(sid)["pid"]
        d.kill9()
        t0 = time.monotonic()
        # the session finishes and its runner gives up waiting for acks (2 s, or its default 30 s) and exits, all
        # during the outage
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=outage + 30, what="runner exit")
        runner_gone = time.monotonic() - t0
        time.sleep(max(0.0, outage - (time.monotonic() - t0)))
        restarted = DaemonProc(home, extra_env=env).start()
        try:
            with restarted.client() as c:
                final = c.wait(sid, timeout=60)
                events = list(c.history(sid))
                counters = c.status().get("counters", {})
        finally:
            restarted.stop()
    figures("daemon outage", outage_s=outage, runner_exited_after_s=round(runner_gone, 1), events=len(events),
            status=final["status"], ended_by=final["ended_by"],
            from_spool=counters.get("spool_events_ingested", 0))
    assert final["status"] == "completed", final
    _check_complete(events)


def test_daemon_down_longer_than_the_runner_waits_then_back(isolated_env: Path) -> None:
    """Daemon SIGKILLed mid-session and down (10 s by default) while the session finishes and its runner,
    after waiting 2 s for acks, exits: the next daemon ingests the spool — complete record, status
    completed (not lost)."""
    _daemon_outage(isolated_env, outage_seconds(10.0))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_daemon_down_longer_than_the_runners_default_30_s_wait(isolated_env: Path) -> None:
    """The same with the runner's real ack wait (30 s, not shortened) and an outage longer than it (35 s): the runner
    gives up during the outage and exits, and nothing is lost (before the spool, a 60 s outage lost 79 of 80 lines).
    (The outage was 60 s; any outage the runner does not outwait shows the same, and this one costs the suite 25 s
    less.)"""
    _daemon_outage(isolated_env, 35.0, env={})


def test_store_refusing_writes_then_back(isolated_env: Path) -> None:
    """Another process holds SQLite's write lock (the store refuses every write) while the session runs,
    finishes and its runner exits; once the lock is released: complete record, status completed, and
    session.ended is the last event (never committed ahead of the runner's queued events)."""
    outage = outage_seconds(10.0)
    try:
        with running_daemon(isolated_env, extra_env=RUNNER_FLUSH_ENV) as d, d.client() as c:
            sid = c.start("labd_testflows:ticker", params={"n": N, "delay": 0.05})
            wait_until(lambda: len([e for e in c.history(sid) if e["kind"] == "custom"]) >= 3, timeout=30,
                       what="first ticks")
            pid = c.session(sid)["pid"]
            db = sqlite3.connect(isolated_env / "labd.db", isolation_level=None, timeout=30)
            db.execute("BEGIN EXCLUSIVE")  # in WAL mode: readers go on, no writer gets in
            t0 = time.monotonic()
            try:
                wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=outage + 30, what="runner exit")
                runner_gone = time.monotonic() - t0
                time.sleep(max(0.0, outage - (time.monotonic() - t0)))
            finally:
                db.execute("ROLLBACK")
                db.close()
            final = c.wait(sid, timeout=90)
            events = list(c.history(sid))
            counters = c.status().get("counters", {})
    finally:
        kill_runners(isolated_env)
    figures("store outage", outage_s=outage, runner_exited_after_s=round(runner_gone, 1), events=len(events),
            status=final["status"], store_unavailable=counters.get("store_unavailable", 0),
            from_spool=counters.get("spool_events_ingested", 0))
    assert final["status"] == "completed", final
    _check_complete(events)


def test_new_sessions_are_refused_while_the_store_cannot_be_written(isolated_env: Path) -> None:
    """While the store refuses writes (another process holds SQLite's write lock; a full disk behaves the same),
    `session.start` is refused at once with `store_unavailable` and nothing is started later; `labd status` (and
    `daemon.status`'s `store`) says the store is not writable and why (it said nothing but a counter). Before, the
    start was accepted, the client timed out asking "is it running?", and each retry ran once the store was back.
    Once the store is writable again, a start works."""
    try:
        with running_daemon(isolated_env, extra_env=STORE_LOCK_ENV) as d, d.client() as c:
            sid = c.start("labd_testflows:ticker", params={"n": N, "delay": 0.05})
            wait_until(lambda: len([e for e in c.history(sid) if e["kind"] == "custom"]) >= 3, timeout=30,
                       what="first ticks")
            db = sqlite3.connect(isolated_env / "labd.db", isolation_level=None, timeout=30)
            db.execute("BEGIN EXCLUSIVE")
            try:
                wait_until(lambda: c.status()["counters"].get("store_unavailable", 0) > 0, timeout=60,
                           what="ingest finding the store locked")
                with pytest.raises(LabdError) as refused:
                    c.start("demo.count", params={"n": 1, "delay": 0}, name="during-outage")
                assert refused.value.code == "store_unavailable"  # an answer, not the client's timeout
                # the refusal says "retry once it is back (labd status)": status says it is not, and why
                store = c.status()["store"]
                assert store["writable"] is False and "locked" in store["error"] and store["down_for_s"] >= 0
                shown = subprocess.run([sys.executable, "-m", "labd", "status"], capture_output=True, text=True,
                                       timeout=60)
                assert "NOT WRITABLE" in shown.stdout and "locked" in shown.stdout, shown.stdout + shown.stderr
            finally:
                db.execute("ROLLBACK")
                db.close()
            assert c.wait(sid, timeout=90)["status"] == "completed"
            assert c.status()["store"] == {"writable": True}
            after = c.start("demo.count", params={"n": 1, "delay": 0})
            assert c.wait(after, timeout=60)["status"] == "completed"
            assert not [s for s in c.sessions(status=[]) if s["name"] == "during-outage"]
    finally:
        kill_runners(isolated_env)


def test_the_daemon_stops_while_the_store_cannot_be_written(isolated_env: Path) -> None:
    """SIGTERM while the store refuses every write (another process holds SQLite's write lock; a full disk is the
    same): the daemon exits within its shutdown ladder instead of waiting for the store for ever (it did: only
    SIGKILL ended it, and meanwhile every client said it had no connection file); a later `labd status` says no
    daemon runs. Once the store is back, the next daemon takes up the session: its record is complete."""
    db = None
    try:
        d = DaemonProc(isolated_env, extra_env=STORE_LOCK_ENV).start()
        with d.client() as c:
            sid = c.start("labd_testflows:ticker", params={"n": N, "delay": 0.05})
            wait_until(lambda: len([e for e in c.history(sid) if e["kind"] == "custom"]) >= 3, timeout=30,
                       what="first ticks")
            db = sqlite3.connect(isolated_env / "labd.db", isolation_level=None, timeout=30)
            db.execute("BEGIN EXCLUSIVE")
            wait_until(lambda: c.status()["counters"].get("store_unavailable", 0) > 0, timeout=60,
                       what="ingest finding the store locked")
        assert d.proc is not None
        t0 = time.monotonic()
        d.proc.terminate()
        code = d.proc.wait(60)  # the ladder's own bounds: ingest 10 s, the template, sockets
        took = time.monotonic() - t0
        d.stop()
        assert code == 0, code
        log = d.log()
        assert "a batch is not recorded" in log and "Traceback" not in log, log[-3000:]
        shown = subprocess.run([sys.executable, "-m", "labd", "status"], capture_output=True, text=True, timeout=60)
        assert shown.returncode != 0 and "no labd daemon is running" in shown.stderr, shown.stderr
        db.execute("ROLLBACK")
        db.close()
        db = None
        with running_daemon(isolated_env, extra_env=RUNNER_FLUSH_ENV) as d2, d2.client() as c:
            final = c.wait(sid, timeout=90)
            events = list(c.history(sid))
    finally:
        if db is not None:
            db.execute("ROLLBACK")
            db.close()
        kill_runners(isolated_env)
    figures("stop during a store outage", stop_took_s=round(took, 1), events=len(events), status=final["status"])
    assert final["status"] == "completed", final
    _check_complete(events)
