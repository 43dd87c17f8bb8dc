"""The SDK's waiting calls across a daemon restart: ``Client.result``, ``Client.wait``, ``Client.follow`` and
``labd.Executor`` futures carry on with the next daemon (the sessions survive ``labd shutdown``: the next
``labd serve`` adopts them), and say which session to wait for again when no daemon comes back in time."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import labd
from labd.ipc import LabdError
from tests.conftest import DaemonProc, wait_until


def gated(gate: str) -> Callable[[int], int]:
    """A function for ``submit``: appends a beat to ``beats`` in its work directory every 50 ms (and prints it)
    until ``gate`` exists, then returns its argument squared. The test opens the gate once the daemon has
    restarted, so the session outlives the restart however long that takes."""

    def square_when_open(x: int) -> int:
        beats = labd.context().workdir / "beats"  # the one place a confined session may write
        i = 0
        while not os.path.exists(gate):
            with open(beats, "a") as f:
                f.write(".")
            print(f"beat {x} {i}", flush=True)
            i += 1
            time.sleep(0.05)
        return x * x

    return square_when_open


def beat_count(home: Path) -> int:
    """The beats of every session of ``home`` (read from their work directories: no daemon needed)."""
    return sum(len(p.read_text()) for p in home.glob("sessions/*/work/beats"))


def stop_daemon_while_sessions_run(daemon: DaemonProc) -> None:
    """A clean stop (SIGTERM, as ``labd shutdown``), then wait until the sessions have beaten on with no daemon
    (they survive it; and the waiting clients have had time to notice the daemon is gone)."""
    daemon.stop()
    after = beat_count(daemon.home)
    wait_until(lambda: beat_count(daemon.home) >= after + 20, timeout=30, what="sessions running with no daemon")


def in_follow(c: Any) -> threading.Event:
    """An event set once ``c`` enters ``follow`` (which ``result`` and ``wait`` use): the call is waiting."""
    entered = threading.Event()
    follow = c.follow

    def spying(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        return follow(*args, **kwargs)

    c.follow = spying
    return entered


@pytest.mark.timeout(120)
def test_result_and_wait_started_before_a_restart_return_the_real_outcome(daemon: DaemonProc, tmp_path: Path) -> None:
    """``result(sid)`` and ``wait(sid)``, each on its own client and already waiting when the daemon is stopped
    cleanly and a new one started, return the session's real value and final row (before: ``no_daemon`` "stopped
    before it replied" within a second of the stop, and again on every retry with the same client)."""
    gate = tmp_path / "gate"
    with daemon.client() as c, daemon.client() as w, ThreadPoolExecutor(2) as pool:
        sid = c.submit(gated(str(gate)), 7)
        wait_until(lambda: beat_count(daemon.home) > 0, timeout=60, what="the function running")
        result_in, wait_in = in_follow(c), in_follow(w)
        value = pool.submit(c.result, sid, 90)
        final = pool.submit(w.wait, sid, 90)
        wait_until(lambda: result_in.is_set() and wait_in.is_set(), what="both calls waiting")
        stop_daemon_while_sessions_run(daemon)
        daemon.start()
        gate.touch()
        assert value.result(timeout=90) == 49
        row = final.result(timeout=90)
        assert row["id"] == sid and row["status"] == "completed", row
        assert c.ping() and w.session(sid)["status"] == "completed"  # both clients talk to the new daemon


@pytest.mark.timeout(120)
def test_follow_across_a_restart_yields_every_event_exactly_once(daemon: DaemonProc, tmp_path: Path) -> None:
    """``follow(sid)`` running while the daemon restarts yields every event of the session once, in order:
    seq 1..N with no gap and no repeat, the same as the stored history (events emitted while no daemon served
    included), ending with ``session.ended``."""
    gate = tmp_path / "gate"
    seen: list[dict[str, Any]] = []
    with daemon.client() as c, ThreadPoolExecutor(1) as pool:
        sid = c.submit(gated(str(gate)), 3)

        def follow() -> None:
            for ev in c.follow(sid, timeout=90):
                seen.append(ev)

        done = pool.submit(follow)
        wait_until(lambda: len(seen) >= 5, timeout=60, what="follow yielding live events")
        stop_daemon_while_sessions_run(daemon)
        daemon.start()
        gate.touch()
        done.result(timeout=90)
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(1, len(seqs) + 1)), "follow lost or repeated events across the restart"
    assert seen[-1]["kind"] == "session.ended"
    with daemon.client() as fresh:
        stored = list(fresh.history(sid))
    assert [e["seq"] for e in stored] == seqs
    assert any(e["kind"] == "session.adopted" for e in stored), "the session was not adopted by the new daemon"
    printed = "".join(e["payload"]["text"] for e in seen if e["kind"] == "output")
    assert printed.count("beat 3 ") == beat_count(daemon.home)  # every line the function printed, once


@pytest.mark.timeout(150)
def test_executor_futures_pending_across_a_restart_all_resolve(daemon: DaemonProc, tmp_path: Path) -> None:
    """An Executor with two calls running and three queued (their sessions not created yet) when the daemon is
    stopped and a new one started: every future resolves with its value (before: all five failed with
    ``no_daemon``, the queued ones too)."""
    gate = tmp_path / "gate"
    fn = gated(str(gate))
    with labd.Executor(max_workers=2, home=daemon.home) as ex:
        futures = [ex.submit(fn, x) for x in range(5)]
        wait_until(lambda: sum(f.session is not None for f in futures) == 2, timeout=60, what="two sessions")
        wait_until(lambda: beat_count(daemon.home) > 0, timeout=60, what="the functions running")
        stop_daemon_while_sessions_run(daemon)
        assert sum(f.session is not None for f in futures) == 2 and not any(f.done() for f in futures)
        daemon.start()
        gate.touch()
        assert [f.result(timeout=120) for f in futures] == [x * x for x in range(5)]
        assert len({f.session for f in futures}) == 5


@pytest.mark.timeout(120)
def test_no_daemon_back_in_time_names_the_session_and_a_later_retry_works(daemon: DaemonProc,
                                                                           tmp_path: Path) -> None:
    """When no daemon serves again within the call's timeout (or, with none, within the client's
    ``restart_wait``: by default none, the call fails at once), ``result`` and ``wait`` fail with ``no_daemon``
    naming the session and telling to call again once a daemon serves; doing so, on the same client, after a
    ``labd serve``, gives the value."""
    gate = tmp_path / "gate"
    with daemon.client() as c:
        sid = c.submit(gated(str(gate)), 5)
        wait_until(lambda: beat_count(daemon.home) > 0, timeout=60, what="the function running")
        daemon.stop()
        begun = time.monotonic()
        with pytest.raises(LabdError) as failed:
            c.result(sid, timeout=2)
        assert time.monotonic() - begun < 30
        err = failed.value
        assert err.code == "no_daemon" and sid in err.message and f"result({sid!r})" in err.message, err
        assert err.details["session"] == sid
        for restart_wait in (0.0, 1.0):  # no timeout of its own: the client's restart_wait (default 0: fail fast)
            c.restart_wait = restart_wait
            begun = time.monotonic()
            with pytest.raises(LabdError) as waited:
                c.wait(sid)
            assert time.monotonic() - begun < 30
            assert waited.value.code == "no_daemon" and f"wait({sid!r})" in waited.value.message, waited.value
        daemon.start()
        gate.touch()
        assert c.result(sid, timeout=60) == 25
