"""Output belongs to the step that printed it, also when a step ends without a newline: a partial line, and a tail
the capture held back as the possible start of a secret, leave before the step's end is recorded (a step boundary
asks the capture for what it keeps back, OutputCapture.sync), not 0.1 s / 1 s later in whatever step runs then."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import running_daemon, wait_until

KEY = "sk-leak-Z9q8w7e6r5t4"
M = "[secret FAKE_API_KEY withheld]"


def _by_step(events: list[dict[str, Any]]) -> dict[str | None, dict[str, str]]:
    """Each step's output, per stream, with the step's name as the key (None: outside any step); checks on the way
    that no output of a step comes after its end."""
    names = {e["node_id"]: e["payload"]["name"] for e in events if e["kind"] == "step.started"}
    ended: set[str] = set()
    out: dict[str | None, dict[str, str]] = {}
    for e in events:
        if e["kind"] == "step.finished":
            ended.add(e["node_id"])
        elif e["kind"] == "output":
            assert e["node_id"] not in ended, f"output after its step ended: {e}"
            per = out.setdefault(names.get(e["node_id"]), {})
            per[e["payload"]["stream"]] = per.get(e["payload"]["stream"], "") + e["payload"]["text"]
    return out


def test_a_partial_line_at_a_step_end_is_recorded_in_that_step(isolated_env: Path) -> None:
    """A step that ends with ``print(..., end="")`` on stdout and stderr: both pieces are recorded in that step,
    before its end, and the next step's output in the next step (before the fix they left 0.1 s after the step
    ended, outside any step)."""
    with running_daemon(isolated_env) as d, d.client() as c:
        sid = c.start("labd_testflows:partial_at_step_end")
        assert c.wait(sid, timeout=60)["status"] == "completed"
        steps = _by_step(list(c.history(sid)))
    assert steps["one"] == {"stdout": "progress 50%", "stderr": "warming up"}, steps
    assert steps["two"] == {"stdout": "step two line\ndone 100%"}, steps
    assert None not in steps, steps


def test_a_held_start_of_a_secret_at_a_step_end_is_recorded_in_that_step_and_the_rest_withheld(
        isolated_env: Path) -> None:
    """A step ends with the first characters of the session's API key (held back: they may start it) and the next
    step prints the rest. The held text is recorded in the step that printed it: 5 characters as they are (under
    8, too short to be taken for the key), 10 as the key's mark; the rest is withheld in the next step, and no 8
    characters of the key in a row reach the record."""
    with running_daemon(isolated_env, extra_env={"FAKE_API_KEY": KEY}) as d, d.client() as c:
        sid = c.start("labd_withholdflows:key_across_steps")
        assert c.wait(sid, timeout=60)["status"] == "completed"
        events = list(c.history(sid))
    steps = _by_step(events)
    assert steps["start-5"] == {"stdout": f"S5 {KEY[:5]}"}, steps
    assert steps["rest-5"] == {"stdout": f"{M} R5\n"}, steps
    assert steps["start-10"] == {"stdout": f"S10 {M}"}, steps
    assert steps["rest-10"] == {"stdout": f"{M} R10\n"}, steps
    runs = [KEY[i:i + 8] for i in range(len(KEY) - 7)]
    assert not [r for r in runs if r in repr(events)]


def test_a_session_reading_stdin_reads_end_of_file_and_its_output_is_all_recorded(isolated_env: Path) -> None:
    """A session's stdin is ``/dev/null``: ``sys.stdin.read()`` returns ``""`` and ``input()`` raises EOFError at once,
    and the line printed before is in the record. Before, fd 0 was the read end of the session's own stdout pipe
    (the runner's fork closed its /dev/null, and the output capture's pipe took fd 0): the read took the printed
    line away from the record, or waited for ever."""
    with running_daemon(isolated_env) as d, d.client() as c:
        sid = c.start("labd_testflows:reads_stdin")
        assert c.wait(sid, timeout=60)["status"] == "completed"
        got = c.result(sid)
        out = "".join(e["payload"]["text"] for e in c.history(sid) if e["kind"] == "output")
    assert got == {"read": "", "input_eof": True, "fd0": "/dev/null", "fd0_is_pipe": False}, got
    assert "important output line\n" in out, out


def test_a_session_ends_as_python_does_its_threads_waited_for_and_its_atexit_handlers_run(isolated_env: Path) -> None:
    """A workflow that returns while a non-daemon thread it started still works, with an ``atexit`` handler and an
    executor never shut down: the session ends once the thread has written its file and printed, then the handler
    ran (in that order, as ``python script.py``), and the record says what it waited for. Before, the runner left
    at once: the thread's file and output and the handler's output were lost without a word."""
    with running_daemon(isolated_env) as d, d.client() as c:
        sid = c.start("labd_testflows:leaves_work_behind", params={"delay": 2.0})  # still at work when it returns
        assert c.wait(sid, timeout=60)["status"] == "completed"
        assert c.result(sid) == "returned"
        events = list(c.history(sid))
        files = [f["path"] for f in c.files(sid)]
    out = "".join(e["payload"]["text"] for e in events if e["kind"] == "output")
    assert "executor job\n" in out and "thread done\natexit ran\n" in out, out
    said = [e["payload"]["event"] for e in events if e["kind"] == "log" and e["payload"].get("logger") == "labd.runner"]
    # the thread it started; not the executor's idle worker, which ended at once (it is said after 0.2 s of waiting)
    assert len(said) == 1 and "waiting for 1 thread(s)" in said[0] and "late-writer" in said[0], said
    assert "from_thread.txt" in files, files


def test_a_thread_that_never_ends_holds_the_session_only_until_it_is_stopped(isolated_env: Path) -> None:
    """A workflow that returns leaving a thread that runs for ever: the session stays running (as the program would)
    and says why in its record; a stop ends it, cancelled, without reaching for SIGKILL."""
    with running_daemon(isolated_env) as d, d.client() as c:
        sid = c.start("labd_testflows:thread_never_ends")
        wait_until(lambda: any("spinner" in (e["payload"].get("event") or "") for e in c.history(sid)
                               if e["kind"] == "log"), what="the wait for the thread to be said")
        assert c.session(sid)["status"] == "running"
        c.stop(sid)
        ended = c.wait(sid, timeout=60)
    assert ended["status"] == "cancelled", ended


def test_a_stop_ends_the_wait_for_an_executors_job_and_for_an_atexit_handler(isolated_env: Path) -> None:
    """A workflow that returns while an executor it never shut down runs a long job: the record says what the session
    waits for, and a stop ends the wait (cancelled), not the job's end. The same for an atexit handler that takes
    long: the session is cancelled, not recorded completed (a review: the executor's join was unbounded and silent,
    and a stop during a handler was swallowed)."""
    with running_daemon(isolated_env) as d, d.client() as c:
        sid = c.start("labd_testflows:busy_at_return", params={"what": "executor"})
        wait_until(lambda: any("long-job" in (e["payload"].get("event") or "") for e in c.history(sid)
                               if e["kind"] == "log"), what="the wait for the executor's job to be said")
        c.stop(sid, grace=1)
        assert c.wait(sid, timeout=60)["status"] == "cancelled"
        sid = c.start("labd_testflows:busy_at_return", params={"what": "atexit"})
        wait_until(lambda: any("atexit begins" in e["payload"].get("text", "") for e in c.history(sid)
                               if e["kind"] == "output"), what="the atexit handler running")
        c.stop(sid, grace=1)
        assert c.wait(sid, timeout=60)["status"] == "cancelled"


def test_an_agent_sessions_idle_workers_add_no_line_to_its_record(isolated_env: Path) -> None:
    """An agent session leaves AnyIO's idle worker thread (non-daemon), which ends at once at the session's end: the
    wait for it is not said (a line in every agent session's record, found by a probe), the session completes."""
    with running_daemon(isolated_env) as d, d.client() as c:
        sid = c.start("one_shot", params={"task": "Step 1 of 1: sum the squares"})
        assert c.wait(sid, timeout=120)["status"] == "completed"
        said = [e["payload"]["event"] for e in c.history(sid)
                if e["kind"] == "log" and e["payload"].get("logger") == "labd.runner"]
    assert said == [], said
