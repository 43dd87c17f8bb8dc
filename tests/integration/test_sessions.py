"""Sessions end to end: start, events, steps, outcomes, and clear errors that start nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from labd.ipc import LabdError
from tests.conftest import running_daemon, wait_until


@pytest.fixture
def client(shared_daemon) -> Iterator[Any]:
    """A client of the module's shared daemon (each test starts and asserts on its own sessions)."""
    with shared_daemon.client() as c:
        yield c


@pytest.fixture
def own_client(daemon) -> Iterator[Any]:
    """A client of the test's own fresh daemon."""
    with daemon.client() as c:
        yield c


def session_ids(client: Any) -> set[str]:
    return {r["id"] for r in client.sessions(limit=1000)}


def running(client: Any) -> set[str]:
    return set(client.status()["running"])


def test_session_runs_in_its_own_process_and_records_gap_free_events(client) -> None:
    """A built-in workflow runs in a separate process; every event is stored once, seq 1..N with no gap."""
    sid = client.start("demo.count", params={"n": 3, "delay": 0.01})
    final = client.wait(sid, timeout=30)
    assert final["status"] == "completed" and final["reason"] == "completed"
    assert final["pid"] and final["pid"] != os.getpid()
    events = list(client.history(sid))
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "session.created" and kinds[-1] == "session.ended"
    assert kinds.count("step.started") == 3 and kinds.count("step.finished") == 3
    text = "".join(e["payload"]["text"] for e in events if e["kind"] == "output")
    assert text == "count 1/3\ncount 2/3\ncount 3/3\n"
    started = next(e for e in events if e["kind"] == "session.started")
    assert started["src"] == "runner" and started["payload"]["pid"] == final["pid"]
    assert [s["status"] for s in final["steps"]] == ["completed"] * 3
    # `starting` (the daemon's session.launched, posted once the template's reply reaches it) may be committed after
    # the runner's own session.started (a spare runner starts at once): then the record goes created -> running and
    # launched only sets the pid. Both are true records; any other lifecycle is not (a CI run saw the second order)
    lifecycle = [h["to_status"] for h in final["history"] if h["node_id"] is None]
    assert lifecycle in (["created", "starting", "running", "completed"], ["created", "running", "completed"]), \
        lifecycle
    assert [h["to_status"] for h in final["history"] if h["node_id"] == "n1"] == ["running", "completed"]


def test_output_is_attributed_to_the_step_that_printed_it(client) -> None:
    """Output (also from a child process and raw fd writes) carries the node id of the step it came from."""
    sid = client.start("demo.compute", params={"rounds": 2, "work": 1000})
    assert client.wait(sid, timeout=30)["status"] == "completed"
    events = list(client.history(sid))
    steps = {e["node_id"]: e["payload"]["name"] for e in events if e["kind"] == "step.started"}
    outputs = [(steps.get(e["node_id"]), e["payload"]["text"]) for e in events if e["kind"] == "output"]
    assert ("round 1", outputs[0][1]) == outputs[0] and outputs[0][1].startswith("round 1:")
    report = "".join(t for name, t in outputs if name == "report")
    assert "child process: report written" in report and "fd-level write: done" in report
    logs = [e for e in events if e["kind"] == "log"]
    assert logs and logs[0]["payload"]["fields"]["round"] == 1 and logs[0]["node_id"] == "n1"


def test_failing_workflow_is_failed_with_its_error(client) -> None:
    """An exception in the workflow ends the session failed, with the error as reason and a failed step."""
    sid = client.start("demo.fail", params={"message": "boom here"})
    final = client.wait(sid, timeout=30)
    assert final["status"] == "failed"
    assert "RuntimeError: boom here" in final["reason"]
    assert final["steps"][0]["status"] == "failed"
    finished = [e for e in client.history(sid) if e["kind"] == "session.finished"][0]
    assert "Traceback" in finished["payload"]["traceback"]


def test_user_workflow_by_import_path_with_typed_params(client) -> None:
    """A user workflow is loaded by import path; string params are converted by annotation."""
    sid = client.start("labd_testflows:needs_param", params={"count": "4"})
    final = client.wait(sid, timeout=30)
    assert final["status"] == "completed"
    assert final["params"] == {"count": 4}
    finished = [e for e in client.history(sid) if e["kind"] == "session.finished"][0]
    assert finished["payload"]["result"] == 2.0


@pytest.mark.parametrize(("workflow", "params", "code"), [
    ("no.such.builtin", {}, "unknown_workflow"),
    ("labd_no_such_module:fn", {}, "unknown_workflow"),
    ("labd_testflows:not_there", {}, "unknown_workflow"),
    ("demo.count", {"n": "many"}, "bad_params"),
    ("demo.count", {"bogus": 1}, "bad_params"),
    ("labd_testflows:needs_param", {}, "bad_params"),
])
def test_bad_workflow_or_params_give_a_clear_error_and_start_nothing(client, workflow, params, code) -> None:
    """Unknown workflows and misfit params are refused with a structured error; no session is created and no
    runner runs."""
    before, running_before = len(client.sessions()), running(client)
    with pytest.raises(LabdError) as err:
        client.start(workflow, params=params)
    assert err.value.code == code
    assert err.value.message and "Traceback" not in err.value.message
    assert len(client.sessions()) == before
    assert running(client) - running_before == set()  # no runner of its own


def test_params_the_record_cannot_hold_are_refused_and_nothing_runs(client) -> None:
    """An int parameter beyond 64 bits, or a float one that is NaN or infinite, is refused ``bad_params`` naming the
    parameter (one JSON cannot carry: ``bad_request`` from the SDK, naming it): before, the first started a runner
    the store had no record of (it could not be listed, stopped or
    shown, and held a `max_sessions` slot), and the second ran with the record saying ``null``."""
    before, running_before = session_ids(client), running(client)
    for params in ({"n": 2**64}, {"n": "99999999999999999999999"}, {"n": -2**63 - 1}, {"delay": "nan"},
                   {"delay": "-inf"}, {"delay": 10**400}):
        with pytest.raises(LabdError) as err:
            client.start("demo.count", params=params)
        value = next(iter(params.values()))
        # an int JSON cannot carry is refused by the SDK before it is sent, naming the field; the daemon does the rest
        past = isinstance(value, int) and not -2**63 <= value < 2**64
        assert err.value.code == ("bad_request" if past else "bad_params"), (params, err.value)
        assert next(iter(params)) in err.value.message and len(err.value.message) < 200, err.value.message
    assert session_ids(client) == before
    assert running(client) - running_before == set()
    sid = client.start("demo.count", params={"n": 2**63 - 1, "delay": "60"})  # the bounds themselves are fine
    client.stop(sid)
    assert client.wait(sid, timeout=60)["status"] == "cancelled"  # ended, not left running past the test


def test_set_tuple_and_union_params_reach_the_workflow_as_their_types(client) -> None:
    """A user workflow's ``set[str]``, ``tuple[int, int]`` and ``int | str`` parameters given as ``-p`` text arrive as
    a set, a tuple and an int (they arrived as the raw strings), the record holds them as JSON lists (a set sorted)
    that bind to the same values when the runner binds them again, and a misfit is refused before anything runs."""
    sid = client.start("labd_testflows:shapes", params={"tags": '["b", "a", "b"]', "pair": "[1, 2]", "either": "5"})
    final = client.wait(sid, timeout=60)
    assert final["status"] == "completed", final["reason"]
    assert client.result(sid) == {"tags": ["a", "b"], "pair": [1, 2], "either": 5, "types": ["set", "tuple", "int"]}
    assert client.session(sid)["params"] == {"tags": ["a", "b"], "pair": [1, 2], "either": 5}
    with pytest.raises(LabdError) as err:
        client.start("labd_testflows:shapes", params={"tags": "a,b"})
    assert err.value.code == "bad_params" and "expected set as JSON" in err.value.message, err.value.message


def _refuse_to_record(home: Path, prefix: str) -> None:
    """Make the daemon's SQLite store refuse to record a session whose name starts with ``prefix`` (a trigger: a
    real refusal of the store, as a constraint would give)."""
    import sqlite3

    db = sqlite3.connect(home / "labd.db", timeout=30)
    with db:
        db.execute(f"CREATE TRIGGER refuse_one BEFORE INSERT ON sessions WHEN NEW.name LIKE '{prefix}%' "
                   "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    db.close()


def test_a_session_the_store_refuses_to_record_does_not_run(daemon, own_client) -> None:
    """When the store refuses a start's ``session.created`` (here a trigger in the database refuses one name; in
    life a constraint or a value it cannot hold), the start is answered ``store_error`` and the runner launched
    meanwhile is killed: no session runs, or holds a slot, without a record. Other starts are unaffected.
    (A fresh daemon: the trigger changes its database, and it asserts that nothing at all runs.)"""
    client = own_client
    _refuse_to_record(daemon.home, "unrecordable")
    with pytest.raises(LabdError) as err:
        client.start("demo.sleep", name=f"unrecordable-{os.getpid()}", params={"seconds": 600})
    assert err.value.code == "store_error"
    wait_until(lambda: client.status()["running"] == [], timeout=30, what="the unrecorded runner killed")
    assert client.sessions() == []
    title = f"unrecordable-{os.getpid()}"  # the runner's process title names the session (runner/title.py)
    assert not [p for p in psutil.process_iter(["cmdline"]) if title in " ".join(p.info["cmdline"] or [])]
    sid = client.start("demo.count", params={"n": 1, "delay": 0})
    assert client.wait(sid, timeout=60)["status"] == "completed"


def test_a_queued_session_the_store_refuses_to_record_leaves_the_queue(isolated_env) -> None:
    """The same refusal for a start that had to queue (``max_sessions = 1``, the slot taken): it is taken out of the
    queue, so when the slot frees the next session starts, not a session without a record."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text("[daemon]\nmax_sessions = 1\n")
    with running_daemon(isolated_env) as d, d.client() as c:
        holder = c.start("demo.sleep", params={"seconds": 600})
        _refuse_to_record(d.home, "unrecordable")
        with pytest.raises(LabdError) as err:
            c.start("demo.sleep", name="unrecordable-queued", params={"seconds": 600})
        assert err.value.code == "store_error"
        after = c.start("demo.count", params={"n": 1, "delay": 0})  # queued behind the holder
        c.stop(holder)
        assert c.wait(after, timeout=60)["status"] == "completed"
        assert sorted(s["id"] for s in c.sessions()) == sorted([holder, after])
        assert c.status()["running"] == []


def test_bad_requests_get_structured_errors(client) -> None:
    """Malformed requests get stable error codes, never a traceback, and the daemon keeps serving; numbers beyond
    what the store holds (found by an attack review: `internal` and `store_error`) are refused as bad input."""
    cases = [
        ("session.start", {}, "bad_request"),
        ("session.start", {"workflow": "demo.count", "limits": {"memory": "lots"}}, "bad_limits"),
        ("session.start", {"workflow": "demo.count", "limits": {"disk": 1}}, "bad_request"),
        ("session.get", {"session": "nope"}, "not_found"),
        ("events.query", {"session": "x", "since": -1}, "bad_request"),
        ("no.such.request", {}, "unknown_request"),
        # beyond what the store's 64-bit integers hold, or any machine: refused, not `internal` / `store_error`
        ("events.query", {"session": "x", "since": 2**63}, "bad_request"),
        ("skill.get", {"name": "x", "version": 2**63}, "bad_request"),
        ("session.start", {"workflow": "skill:x@99999999999999999999"}, "bad_request"),
        ("session.start", {"workflow": "skill:x@latest"}, "bad_request"),
        ("session.start", {"workflow": "demo.count", "limits": {"memory": "1e30T"}}, "bad_limits"),
        ("session.start", {"workflow": "demo.count", "limits": {"memory": 1e300}}, "bad_limits"),
        ("session.start", {"workflow": "demo.count", "limits": {"timeout": 2**80}}, "bad_request"),  # SDK: > 64 bit
        ("session.start", {"workflow": "demo.count", "limits": {"timeout": "9999999999999999w"}}, "bad_limits"),
    ]
    for type_, body, code in cases:
        with pytest.raises(LabdError) as err:
            client.request(type_, **body)
        assert err.value.code == code, (type_, body, err.value)
    assert client.ping()["pid"] > 0


def test_stored_session_ended_carries_status_and_reason(shared_daemon) -> None:
    """The stored `session.ended` (what history and every client read back) holds the final status and reason,
    the same as the live tail and the session row."""
    with shared_daemon.client() as c:
        sid = c.start("demo.count", params={"n": 1})
        assert c.wait(sid, timeout=60)["status"] == "completed"
        ended = [e for e in c.history(sid) if e["kind"] == "session.ended"]
        assert ended[0]["payload"]["status"] == "completed" and ended[0]["payload"]["reason"] == "completed"


def test_a_repeated_name_means_the_session_that_has_not_ended(client) -> None:
    """Names may repeat. `labd stop study` while one `study` runs and a newer one has completed stops the running
    one (before: the newest, which had already ended: "not running"); two unended sessions with one name are
    `ambiguous`, listing both ids; once every one has ended, the name means the newest."""
    running = client.start("demo.sleep", params={"seconds": 60}, name="dup-name")
    done = client.start("demo.count", params={"n": 1}, name="dup-name")
    assert client.wait(done, timeout=30)["status"] == "completed"
    assert client.session("dup-name")["id"] == running
    other = client.start("demo.sleep", params={"seconds": 60}, name="dup-name")
    with pytest.raises(LabdError) as exc:
        client.session("dup-name")
    assert exc.value.code == "ambiguous" and set(exc.value.details["matches"]) == {running, other}
    client.stop(other)
    assert client.wait(other, timeout=30)["status"] == "cancelled"
    client.stop("dup-name")  # resolves to the one still running
    assert client.wait(running, timeout=30)["status"] == "cancelled"
    assert client.session("dup-name")["id"] == other  # all ended: the newest


def test_a_name_of_hex_digits_only_is_refused(client) -> None:
    """A name such as `beef` would shadow every session id starting with it, so a start (or a branch) naming it
    is refused with a clear error and starts nothing; a name with any other character is fine."""
    before = len(client.sessions())
    with pytest.raises(LabdError) as exc:
        client.start("demo.count", params={"n": 1}, name="0d5d")
    assert exc.value.code == "bad_request" and "hex digits" in exc.value.message
    assert len(client.sessions()) == before
    sid = client.start("demo.count", params={"n": 1}, name="run-0d5d")
    assert client.wait(sid, timeout=30)["status"] == "completed"
    assert client.session("run-0d5d")["id"] == sid


def test_a_name_with_a_newline_or_control_character_is_refused(client) -> None:
    """A name is shown on one line of `labd show` and `ps` and in the runner's process title: one with a newline, a
    tab or an escape character (which could forge lines or recolour a terminal) is refused ``bad_request`` and
    starts nothing; other Unicode is fine."""
    before = session_ids(client)
    for bad in ("a\nb", "tab\there", "red\x1b[31m", "nul\x00", "zero\u200bwidth"):
        with pytest.raises(LabdError) as exc:
            client.start("demo.count", params={"n": 1}, name=bad)
        assert exc.value.code == "bad_request" and "printable" in exc.value.message, bad
    assert session_ids(client) == before
    sid = client.start("demo.count", params={"n": 1}, name="étude 1 — α")
    assert client.wait(sid, timeout=30)["status"] == "completed"
    assert client.session("étude 1 — α")["id"] == sid


def test_a_name_finds_its_running_session_behind_many_ended_ones(client) -> None:
    """A long run named `nightly` is found by its name while more than twenty later `nightly` runs have ended
    (only the newest twenty matches were looked at: `labd stop nightly` then meant an ended one; review)."""
    running = client.start("demo.sleep", params={"seconds": 120}, name="nightly")
    ended = [client.start("demo.count", params={"n": 1, "delay": 0}, name="nightly") for _ in range(22)]
    for sid in ended:
        client.wait(sid, timeout=60)
    assert client.session("nightly")["id"] == running
    client.stop("nightly", grace=1)
    assert client.wait(running, timeout=30)["status"] == "cancelled"
    assert client.session("nightly")["id"] == ended[-1]


def test_last_seen_is_the_runners_last_frame_while_it_runs_and_null_once_ended(shared_daemon) -> None:
    """The session view's `last_seen` is the time of the runner's last frame while it runs; once the session has
    ended it is `null`: the daemon keeps no per-session entry for sessions that ended (it kept one for every
    session ever run, growing for as long as the daemon ran)."""
    import time

    with shared_daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 60})
        seen = wait_until(lambda: c.session(sid)["last_seen"], timeout=60, what="the runner's first frame")
        assert abs(seen - time.time()) < 60
        c.kill(sid)
        wait_until(lambda: c.session(sid)["status"] == "cancelled", timeout=60, what="the session ended")
        wait_until(lambda: c.session(sid)["last_seen"] is None, timeout=30, what="last_seen forgotten")


def test_sys_exit_in_workflow_code_ends_the_session_as_it_ends_a_python_program(shared_daemon, tmp_path) -> None:
    """``sys.exit()`` or ``sys.exit(0)`` in a workflow completes its session (result null), as it is a successful
    exit of a Python program; ``sys.exit(3)`` or ``sys.exit("why")`` fails it, saying ``SystemExit: 3``. Before, every
    ``sys.exit`` failed the session, ``sys.exit(0)`` with the error "SystemExit: 0"."""
    flows = tmp_path / "exits.py"
    flows.write_text("import sys\n\n\n"
                     "def quits(ctx, code: str = 'none'):\n"
                     "    print('before')\n"
                     "    sys.exit(None if code == 'none' else int(code) if code.isdigit() else code)\n")
    with shared_daemon.client() as c:
        ended = {}
        for code in ("none", "0", "3", "why"):
            sid = c.start(f"{flows}:quits", params={"code": code})
            row = c.wait(sid, timeout=60)
            finished = next(c.history(sid, kinds=["session.finished"]))["payload"]
            ended[code] = (row["status"], finished.get("error"))
    assert ended == {"none": ("completed", None), "0": ("completed", None), "3": ("failed", "SystemExit: 3"),
                     "why": ("failed", "SystemExit: why")}


def test_a_start_with_a_field_it_does_not_take_is_refused_and_starts_nothing(client) -> None:
    """``session.start`` with ``limit`` (for ``limits``) or ``param`` (for ``params``): ``bad_request`` naming the
    field (``details.field``), and no session is recorded. Both were ignored: the session ran with no memory limit,
    or with its default parameters, and the client was told it had started. Every field the protocol lists, and the
    Python client's own starts, still start."""
    before = {s["id"] for s in client.sessions(limit=1000)}
    for body, field in [({"workflow": "demo.count", "limit": {"memory": "256M"}}, "limit"),
                        ({"workflow": "demo.count", "param": {"n": 1}}, "param")]:
        with pytest.raises(LabdError) as err:
            client.request("session.start", **body)
        assert err.value.code == "bad_request" and repr(field) in err.value.message, err.value
        assert err.value.details == {"field": field}
    assert {s["id"] for s in client.sessions(limit=1000)} == before
    sid = client.request("session.start", workflow="demo.count", params={"n": 1, "delay": 0}, name="every-field",
                         limits={"memory": "256M"}, cwd="/", pythonpath=[], network="off", tags={"k": "v"},
                         priority=0, idempotency_key="every-field-1")["session"]
    assert client.session(sid)["limits"]["memory"] == 256 * 1024 * 1024
    assert client.wait(sid, timeout=60)["status"] == "completed"
    assert client.wait(client.start("demo.count", params={"n": 1, "delay": 0}, memory="256M"),
                       timeout=60)["status"] == "completed"


def test_a_second_stop_answers_with_the_stop_in_force(client) -> None:
    """A stop while one is under way changes nothing, and its answer says so with the grace in force (it echoed the
    second request's grace, as if that one applied: protocol review)."""
    sid = client.start("labd_testflows:stubborn")
    wait_until(lambda: client.session(sid)["status"] == "running", timeout=60, what="running")
    first = client.stop(sid, 30.0)
    second = client.stop(sid, 2.0)
    try:
        assert (first["grace"], first.get("already_stopping")) == (30.0, None)
        assert (second["grace"], second["already_stopping"]) == (30.0, True)
    finally:
        client.kill(sid)
        client.wait(sid, timeout=60)
