"""Python functions as sessions: Client.submit / Client.result and labd.Executor, against real daemons and runners."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import labd
from labd.ipc import LabdError
from labd.ipc.functions import FUNCTION_WORKFLOW, MAX_PAYLOAD, MAX_PAYLOAD_TEXT
from tests.conftest import wait_until


class Point:
    """A plain class at module level: pickled by reference, so the runner must import this module."""

    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y

    def norm2(self) -> float:
        return self.x * self.x + self.y * self.y


def make_point(x: float, y: float) -> Point:
    return Point(x, y)


def events_of(client: Any, sid: str) -> list[dict[str, Any]]:
    return list(client.history(sid))


@pytest.fixture
def client(shared_daemon) -> Iterator[Any]:
    """A client of the module's shared daemon (each test starts and asserts on its own sessions)."""
    with shared_daemon.client() as c:
        yield c


def session_ids(client: Any) -> set[str]:
    return {r["id"] for r in client.sessions(limit=1000)}


def test_closure_runs_as_a_full_session_and_the_record_keeps_the_payload(client) -> None:
    """A closure over a local list runs in its own runner: output captured, labd.context() gives the session's
    ctx (steps, files), the value comes back; the pickle is in session.created (hash in params), not in the row."""
    items = [1, 2, 3]
    here = os.getpid()

    def total(extra: int) -> dict[str, Any]:
        print("summing", items)
        ctx = labd.context()
        with ctx.step("write"):
            (ctx.workdir / "sum.txt").write_text(str(sum(items)))
        return {"sum": sum(items) + extra, "session": ctx.session_id, "pid": os.getpid(), "caller": here}

    sid = client.submit(total, 10)
    value = client.result(sid, timeout=60)
    assert value["sum"] == 16 and value["session"] == sid and value["pid"] not in (here, None)
    row = client.session(sid)
    assert row["status"] == "completed" and row["workflow"] == FUNCTION_WORKFLOW
    assert row["name"].startswith("total-")
    assert [s["name"] for s in row["steps"]] == ["total", "write"]
    events = events_of(client, sid)
    assert "summing [1, 2, 3]\n" in "".join(e["payload"]["text"] for e in events if e["kind"] == "output")
    assert [f["path"] for f in client.files(sid)] == ["sum.txt"]
    created = events[0]["payload"]
    raw = base64.b64decode(created["payload"])
    assert created["params"]["sha256"] == hashlib.sha256(raw).hexdigest() == row["params"]["sha256"]
    assert "payload" not in row["params"] and row["params"]["size"] == len(raw)
    finished = next(e["payload"] for e in events if e["kind"] == "session.finished")
    assert "'sum': 16" in finished["result"]["repr"] and finished["result"]["type"] == "builtins.dict"
    # `labd ps` names the function, not the built-in workflow that calls it
    ps = subprocess.run([sys.executable, "-m", "labd", "ps", "-a"], capture_output=True, text=True, timeout=60)
    (line,) = [ln for ln in ps.stdout.splitlines() if sid in ln]
    assert "total (submitted)" in line and FUNCTION_WORKFLOW not in line
    by_name = subprocess.run([sys.executable, "-m", "labd", "ps", "-a", "--workflow", "total"], capture_output=True,
                             text=True, timeout=60)
    assert sid in by_name.stdout  # --workflow finds it by the function's name


def test_lambda_with_args_and_kwargs(client) -> None:
    """A lambda is sent by value; positional and keyword arguments arrive; the name says it was a lambda."""
    sid = client.submit(lambda x, y=1: x * y, 6, y=7)
    assert client.result(sid, timeout=60) == 42
    assert client.session(sid)["name"].startswith("lambda-")
    # result() works for any workflow: a JSON result comes back as it is
    assert client.result(client.start("demo.count", params={"n": 1, "delay": 0}), timeout=60) == 1


def test_a_submitted_function_can_be_replayed(client) -> None:
    """`labd replay` of a submitted function's session runs the same call again (same result, a session of origin
    replay); it was refused `unknown params ['sha256', 'size'] for a function call`: the replay sent back the
    digest and size the daemon records beside the call's params."""
    sid = client.submit(lambda x, y=1: x * y, 6, y=7)
    assert client.result(sid, timeout=60) == 42
    again = client.replay(sid)
    assert client.result(again, timeout=60) == 42
    s = client.session(again)
    assert s["origin"] == "replay" and s["parent_id"] == sid
    assert s["params"]["sha256"] == client.session(sid)["params"]["sha256"]


def test_function_defined_in_main_of_a_script(shared_daemon, tmp_path: Path) -> None:
    """Functions and a class defined in a script's __main__ (using its globals and a helper) travel by value;
    a module beside the script, used by them or whose function is sent, travels by reference (not its state) and
    is found through the sent sys.path."""
    # a module of the user's own (outside sys.prefix) holding something unpicklable: it must travel by reference
    (tmp_path / "scriptmod_helpers.py").write_text("STATE = (i for i in range(3))\n\ndef cube(x):\n    return x ** 3\n")
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        import labd
        import scriptmod_helpers

        FACTOR = 3

        class Box:
            def __init__(self, v):
                self.v = v
            def doubled(self):
                return 2 * self.v

        def helper(x):
            return x * FACTOR

        def work(n):
            return Box(helper(n) + scriptmod_helpers.cube(0))

        if __name__ == "__main__":
            with labd.Client() as c:
                box = c.result(c.submit(work, 5), timeout=60)
                cube = c.result(c.submit(scriptmod_helpers.cube, 4), timeout=60)
            print(json.dumps({"isinstance": isinstance(box, Box), "v": box.v, "doubled": box.doubled(),
                              "cube": cube}))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100,
                         cwd=tmp_path, env=shared_daemon.env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"isinstance": True, "v": 15, "doubled": 30,
                                                              "cube": 64}


def test_raising_function_raises_remote_error_with_traceback(client) -> None:
    """A function that raises fails its session; result() raises RemoteError with the remote type, message and a
    traceback that shows the user's frames (not the runner's), and the exception object itself."""
    def inner(n: int) -> None:
        raise ValueError(f"bad input {n}")

    def outer(n: int) -> None:
        inner(n)

    sid = client.submit(outer, 7)
    with pytest.raises(labd.RemoteError) as info:
        client.result(sid, timeout=60)
    err = info.value
    assert (err.type_name, err.message, err.status, err.session) == ("ValueError", "bad input 7", "failed", sid)
    assert "in outer" in err.traceback and "in inner" in err.traceback and "ValueError: bad input 7" in err.traceback
    assert "workflows/function.py" not in err.traceback
    assert isinstance(err.exception, ValueError) and str(err.exception) == "bad input 7"
    assert "remote traceback" in str(err)
    assert client.session(sid)["status"] == "failed"


def test_custom_class_instance_returned(client) -> None:
    """A custom class instance comes back as an instance of that class (module-level class: by reference;
    a class defined inside the function: by value)."""
    p = client.result(client.submit(make_point, 3, 4), timeout=60)
    assert isinstance(p, Point) and p.norm2() == 25

    def local_class() -> Any:
        class Pair:
            def __init__(self) -> None:
                self.items = ("a", 1)

            def first(self) -> str:
                return self.items[0]
        return Pair()

    pair = client.result(client.submit(local_class), timeout=60)
    assert type(pair).__name__ == "Pair" and pair.first() == "a" and pair.items == ("a", 1)


def hog_memory(mb: int) -> None:
    blocks = [b"x" * (mb << 20)]  # bytes are written, so the pages count in RSS
    time.sleep(600)
    print(len(blocks))


def test_limits_apply_and_a_killed_function_raises_remote_error(client) -> None:
    """A submitted function is held to its session's limits: over its memory limit it is killed, and result()
    raises RemoteError saying how the session ended."""
    sid = client.submit(hog_memory, 400, memory="150M", timeout="120s")
    with pytest.raises(labd.RemoteError) as info:
        client.result(sid, timeout=90)
    err = info.value
    assert err.status == "failed" and err.type_name == "SessionEnded" and "killed: memory" in err.message
    assert client.session(sid)["limits"]["memory"] == 150 * 2**20


def test_unserializable_return_value_is_reported_as_such(client) -> None:
    """A return value that cannot be pickled fails the session with an error that says so and names the part."""
    sid = client.submit(lambda: {"ok": 1, "gen": (i for i in range(3))})
    with pytest.raises(labd.RemoteError) as info:
        client.result(sid, timeout=60)
    assert info.value.type_name.endswith("ResultNotSerializable")
    assert "the return value['gen']: a generator object cannot be sent back" in info.value.message


def test_unpicklable_argument_is_refused_at_submit_time_with_its_path(client) -> None:
    """An argument that cannot be pickled is refused before anything starts, naming the argument and the type."""
    before = session_ids(client)
    with socket.socket() as sock:
        with pytest.raises(LabdError) as info:
            client.submit(lambda a, b: None, 1, sock)
        assert info.value.code == "not_serializable"
        assert info.value.message.startswith("argument 2: a socket object cannot be sent to a session")
        with pytest.raises(LabdError) as info:
            client.submit(lambda cfg: None, cfg={"conns": [1, sock]})
        assert info.value.message.startswith("keyword argument 'cfg'['conns'][1]: a socket object")

        def uses_socket() -> None:
            sock.send(b"x")

        with pytest.raises(LabdError) as info:
            client.submit(uses_socket)
        assert info.value.message.startswith("the function (closure variable 'sock'): a socket object")
    assert session_ids(client) == before  # no session was started


def test_oversize_payload_is_refused_by_client_and_daemon(client) -> None:
    """A pickle over the bound is refused by the client with advice to use files; the daemon refuses an oversize or
    malformed payload itself, and the function workflow without one, starting nothing and staying up."""
    before = session_ids(client)
    with pytest.raises(LabdError) as info:
        client.submit(len, b"x" * (MAX_PAYLOAD + 1))
    assert info.value.code == "payload_too_large" and "as files" in info.value.message
    with pytest.raises(LabdError) as info:
        client.request("session.start", workflow=FUNCTION_WORKFLOW, params={}, payload="A" * (MAX_PAYLOAD_TEXT + 4))
    assert info.value.code == "bad_request" and "payload" in info.value.message
    with pytest.raises(LabdError) as info:
        client.request("session.start", workflow=FUNCTION_WORKFLOW, params={})
    assert info.value.code == "bad_request"
    with pytest.raises(LabdError) as info:
        client.request("session.start", workflow=FUNCTION_WORKFLOW, params={}, payload="not base64!")
    assert info.value.code == "bad_params"
    with pytest.raises(LabdError) as info:
        client.request("session.start", workflow="demo.count", params={}, payload="AAAA")
    assert info.value.code == "bad_request"
    assert session_ids(client) == before and client.ping()["pid"]


def slow_square(x: int) -> int:
    time.sleep(1.0)
    return x * x


def test_executor_map_runs_at_most_max_workers_sessions_at_once_in_order(shared_daemon) -> None:
    """Executor.map over 20 items with max_workers=4: 20 sessions, results in input order, and by the record's
    timestamps never more than 4 alive at once (and more than one, so it does run in parallel)."""
    daemon = shared_daemon
    with daemon.client() as c:
        before = session_ids(c)
    with labd.Executor(max_workers=4, home=daemon.home, name="sq") as ex:
        assert list(ex.map(slow_square, range(20), timeout=300)) == [x * x for x in range(20)]
    with daemon.client() as c:
        rows = [r for r in c.sessions(limit=1000) if r["id"] not in before]  # the sessions this test started
    assert len(rows) == 20 and all(r["status"] == "completed" for r in rows)
    assert sorted(r["name"] for r in rows) == sorted(f"sq-{i}" for i in range(1, 21))
    points = sorted([(r["created_at"], 1) for r in rows] + [(r["ended_at"], -1) for r in rows])
    alive, most = 0, 0
    for _, step in points:
        alive += step
        most = max(most, alive)
    assert 2 <= most <= 4


def test_cancelling_a_future_stops_its_session(shared_daemon) -> None:
    """Cancelling a running future stops its session (status cancelled); a queued one never starts a session;
    result() with a timeout gives up with `timeout` while the session runs, and raises Cancelled after."""
    daemon = shared_daemon
    with daemon.client() as c:
        before = session_ids(c)
    with daemon.client() as c, labd.Executor(max_workers=1, home=daemon.home, stop_grace=1.0) as ex:
        running = ex.submit(time.sleep, 600)
        queued = ex.submit(time.sleep, 600)
        sid = wait_until(lambda: running.session, timeout=60, what="session started")
        wait_until(lambda: c.session(sid)["status"] == "running", timeout=60, what="session running")
        with pytest.raises(LabdError) as info:
            c.result(sid, timeout=0.5)
        assert info.value.code == "timeout"
        assert running.cancel() and running.cancelled() and running.done()
        assert queued.cancel()
        row = wait_until(lambda: (r := c.session(sid))["ended_at"] and r, timeout=60, what="session ended")
        assert row["status"] == "cancelled"
        with pytest.raises(labd.RemoteError) as err:
            c.result(sid, timeout=30)
        assert err.value.type_name == "Cancelled" and err.value.status == "cancelled"
    with daemon.client() as c:
        assert session_ids(c) - before == {sid}  # the queued call never started one
    assert queued.cancelled() and queued.session is None


def test_executor_future_carries_remote_error(shared_daemon) -> None:
    """A failing call fails its future with RemoteError; the executor carries on with the next call."""
    with labd.Executor(max_workers=2, home=shared_daemon.home) as ex:
        bad = ex.submit(lambda: 1 / 0)
        good = ex.submit(lambda: "fine")
        assert isinstance(bad.exception(timeout=60), labd.RemoteError)
        assert bad.exception().type_name == "ZeroDivisionError"  # type: ignore[union-attr]
        assert good.result(timeout=60) == "fine"
    with pytest.raises(RuntimeError):
        ex.submit(print)


def test_result_fetched_later_from_a_second_client_process(client, shared_daemon) -> None:
    """The value is in the record: another process, after the submitting client is gone, reads it back."""
    data = {"xs": [1, 2, 3]}
    sid = client.submit(lambda d: {"total": sum(d["xs"]), "n": len(d["xs"])}, data)
    client.wait(sid, timeout=60)
    code = "import json, sys, labd\nprint(json.dumps(labd.Client().result(sys.argv[1])))"
    out = subprocess.run([sys.executable, "-c", code, sid], capture_output=True, text=True, timeout=60,
                         env=shared_daemon.env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"total": 6, "n": 3}


def test_context_outside_a_session_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """labd.context() outside a session says so instead of returning something half-made."""
    monkeypatch.setattr("labd.runner.context._current", None)  # unit tests in this process may have made one
    with pytest.raises(RuntimeError, match="only available inside a labd session"):
        labd.context()


def test_result_too_large_for_the_daemons_messages_is_reported(small_daemon) -> None:
    """A return value too large for one event under the daemon's max_message (64 KiB here) fails the session with
    ResultTooLarge, which says to use files, instead of vanishing with the event; a smaller one still comes back."""
    with small_daemon.client() as c:
        sid = c.submit(lambda: b"x" * (200 * 1024))
        with pytest.raises(labd.RemoteError) as info:
            c.result(sid, timeout=60)
        assert info.value.type_name.endswith("ResultTooLarge") and "files" in info.value.message
        assert c.result(c.submit(lambda: b"y" * 30_000), timeout=60) == b"y" * 30_000


def _two_steps() -> int:
    ctx = labd.context()
    with ctx.step("first"):
        pass
    with ctx.step("second"):
        pass
    return 1


def test_a_branch_of_a_submitted_function_with_params_is_refused_up_front(client) -> None:
    """A submitted function's arguments are part of the call it recorded: ``labd branch FN --from STEP -p x=1`` is
    refused ``bad_params`` at once, naming the parameter (it was accepted, and the branch then failed in its runner);
    without params the branch runs the call again from that step."""
    sid = client.submit(_two_steps)
    assert client.result(sid, timeout=60) == 1
    with pytest.raises(LabdError) as refused:
        client.branch(sid, "second", params={"x": 1})
    assert refused.value.code == "bad_params" and "x" in refused.value.details["params"]
    assert "submitted function" in refused.value.message
    branched = client.branch(sid, "second")["sessions"][0]["session"]
    assert client.result(branched, timeout=60) == 1
