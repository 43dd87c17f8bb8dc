"""The Python SDK on a bad day (SDK power-user review): an Executor shut down twice, left at interpreter exit, or
left by an exception; a session ended by a limit; a submit from a removed directory; an ``async def`` function;
following from past a session's end. Against the module's shared daemon and real runners."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import labd
from tests.conftest import wait_until


async def async_answer(x: int) -> int:
    """An ``async def`` function: submitted, it is awaited in the session."""
    return x * 2


def test_shutdown_without_wait_then_with_cancel_futures_returns(shared_daemon) -> None:
    """``shutdown(wait=False)`` then ``shutdown(cancel_futures=True)`` cancels the queued calls and returns once the
    running one ends (it hung for ever: the second call drained the first one's end markers and put none back)."""
    ex = labd.Executor(max_workers=1, home=shared_daemon.home)
    running = ex.submit(time.sleep, 2)
    queued = [ex.submit(time.sleep, 2) for _ in range(2)]
    wait_until(lambda: running.session, timeout=60, what="the first call's session")
    ex.shutdown(wait=False)
    done = threading.Event()
    threading.Thread(target=lambda: (ex.shutdown(cancel_futures=True), done.set()), daemon=True).start()
    assert done.wait(120), "shutdown(cancel_futures=True) did not return"
    assert running.result(timeout=1) is None
    assert all(f.cancelled() and f.session is None for f in queued)


def test_calls_still_queued_at_interpreter_exit_run_before_it_exits(shared_daemon, tmp_path: Path) -> None:
    """A script that submits three calls to a one-worker Executor and ends without shutting it down: the process
    waits for all three, as ``concurrent.futures`` pools do (it exited at once: the second and third never started,
    the first was left running unfollowed)."""
    script = tmp_path / "leave.py"
    script.write_text(textwrap.dedent("""
        import time
        import labd
        ex = labd.Executor(max_workers=1, name="left-at-exit")
        futures = [ex.submit(time.sleep, 0.5) for _ in range(3)]
    """))
    with shared_daemon.client() as c:
        before = {r["id"] for r in c.sessions(limit=1000)}
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                              env={**os.environ, "LABD_HOME": str(shared_daemon.home)})
        assert proc.returncode == 0, proc.stderr
        rows = [r for r in c.sessions(limit=1000) if r["id"] not in before]
    assert sorted(r["name"] for r in rows) == [f"left-at-exit-{i}" for i in (1, 2, 3)]
    assert all(r["status"] == "completed" for r in rows), rows


def test_an_exception_leaving_with_cancels_the_calls_and_stops_their_sessions(shared_daemon) -> None:
    """An exception (as Ctrl-C's KeyboardInterrupt) leaving ``with Executor()``: the running call's session is
    stopped and the queued calls never start (every one of them ran to its end before, for a caller gone)."""
    futures: list[Any] = []
    with pytest.raises(RuntimeError, match="the caller gave up"), \
            labd.Executor(max_workers=1, home=shared_daemon.home, stop_grace=1.0) as ex:
        futures = [ex.submit(time.sleep, 600) for _ in range(3)]
        wait_until(lambda: futures[0].session, timeout=60, what="the first call's session")
        raise RuntimeError("the caller gave up")
    assert all(f.cancelled() for f in futures)
    assert [f.session is None for f in futures] == [False, True, True]
    with shared_daemon.client() as c:
        row = wait_until(lambda: (r := c.session(futures[0].session))["ended_at"] and r, timeout=60,
                         what="the running session stopped")
    assert row["status"] == "cancelled"


@pytest.mark.parametrize(("limits", "says"), [
    ({"memory": "lots"}, "lots"),
    ({"memory": "512"}, "has no unit"),
    ({"memory": "1M"}, "below what a runner needs"),
    ({"timeout": -1}, "positive"),
    ({"budget_action": "explode"}, "stop or pause"),
    ({"max_output": "a lot"}, "output limit"),
])
def test_an_executor_with_a_limit_the_daemon_would_refuse_fails_where_it_is_made(
        shared_daemon, limits: dict[str, Any], says: str) -> None:
    """``labd.Executor(memory="lots")`` raises ``bad_limits`` at once, with the daemon's own message (it was
    accepted, and then every future failed with it, each after its round trip); no session is started."""
    with shared_daemon.client() as c:
        before = len(c.sessions(limit=1000))
    with pytest.raises(labd.LabdError, match=says) as caught:
        labd.Executor(max_workers=2, home=shared_daemon.home, **limits)
    assert caught.value.code == "bad_limits"
    with shared_daemon.client() as c:
        assert len(c.sessions(limit=1000)) == before
        with pytest.raises(labd.LabdError) as daemon_said:  # the same rules, the same words
            c.request("session.start", workflow="demo.count",
                      limits={"output" if k == "max_output" else k: v for k, v in limits.items()})
    assert (daemon_said.value.code, daemon_said.value.message) == ("bad_limits", caught.value.message)


def test_a_session_ended_by_its_time_limit_says_so(client: Any) -> None:
    """A function stopped by its wall-time limit raises RemoteError ``SessionEnded`` whose message names the limit
    (it raised a "terminated (SIGTERM)" type with an empty message: the reason, in the record, was lost)."""
    sid = client.submit(time.sleep, 600, timeout="2s")
    with pytest.raises(labd.RemoteError) as info:
        client.result(sid, timeout=120)
    assert info.value.type_name == "SessionEnded", (info.value.type_name, info.value.message)
    assert "wall time" in info.value.message and sid in info.value.message


def test_submit_from_a_removed_working_directory(client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Submitting from a working directory that was removed works, as ``start`` does (it raised
    FileNotFoundError from ``os.getcwd()``)."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert client.result(client.submit(lambda: 42), timeout=120) == 42


def test_an_async_function_is_awaited(client: Any) -> None:
    """An ``async def`` function's result is what its coroutine returns (it failed: a coroutine does not pickle)."""
    assert client.result(client.submit(async_answer, 21), timeout=120) == 42


def test_following_from_past_the_end_of_a_running_session_ends_with_it(client: Any) -> None:
    """``follow(sid, since=N)`` with N past the last event of a running session returns when the session ends (it
    waited for ever: the session.ended event came at or below N, so it was never seen)."""
    sid = client.submit(time.sleep, 1)
    assert list(client.follow(sid, since=10**9, timeout=120)) == []
    assert client.session(sid)["status"] == "completed"


@pytest.fixture
def client(shared_daemon) -> Any:
    """A client of the module's shared daemon."""
    with shared_daemon.client() as c:
        yield c
