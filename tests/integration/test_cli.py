"""The ``labd`` command line against a real daemon: what a user types and sees."""

from __future__ import annotations

import json

from tests.integration.cli_support import labd


def test_run_follow_streams_output_and_exit_code_reflects_the_outcome(shared_daemon) -> None:
    """``labd run --follow`` prints the session's output live and exits 0 on success, 1 on failure."""
    ok = labd("run", "demo.count", "--name", "cli-count", "-p", "n=3", "-p", "delay=0", "--follow")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "count 1/3\ncount 2/3\ncount 3/3\n"
    assert "session completed" in ok.stderr
    bad = labd("run", "demo.fail", "--follow")
    assert bad.returncode == 1
    assert "about to fail" in bad.stdout and "session failed" in bad.stderr


def test_ps_show_events_logs_for_a_finished_session(shared_daemon) -> None:
    """After a run, ps lists it, show explains it, events and logs replay it from the store."""
    sid = labd("run", "demo.compute", "-p", "rounds=2", "-p", "work=100").stdout.strip()
    assert len(sid) == 12
    with shared_daemon.client() as c:
        c.wait(sid, timeout=30)
    ps = labd("ps", "--all")
    assert sid in ps.stdout and "completed" in ps.stdout and ps.stdout.startswith("ID")
    show = labd("show", sid[:8])
    assert "status    completed\n" in show.stdout and "round 2" in show.stdout  # not "completed  (completed)"
    assert "ended by  its runner exited  exit code 0" in show.stdout
    events = [json.loads(line) for line in labd("events", sid, "--json").stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    since = [json.loads(line) for line in labd("events", sid, "--json", "--since", "5").stdout.splitlines()]
    assert since[0]["seq"] == 6
    logs = labd("logs", sid, "--output-only")
    assert "round 1:" in logs.stdout and "child process: report written" in logs.stdout


def test_ps_keeps_both_ends_of_a_long_name(shared_daemon) -> None:
    """On a terminal, a name longer than ps's NAME column keeps its start and its end around "…": a branch's name is
    its parent's with ``-branch-<id>`` added, and cut at the end every branch read like its parent. In a pipe, the
    name is whole (`labd ps -a | grep` found none of a sweep's cut names: power-user review). The same for a long
    workflow name."""
    import re

    from tests.integration.cli_support import labd_tty

    name = "a-rather-long-study-name-branch-1a2b3c"
    sid = labd("run", "demo.count", "--name", name, "-p", "n=1", "-p", "delay=0", "--wait").stdout.strip()
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", labd_tty("ps", "--all"))
    row = next(line for line in shown.splitlines() if line.startswith(sid))
    assert "a-rather-long-…branch-1a2b3c" in row, row
    piped = next(line for line in labd("ps", "--all").stdout.splitlines() if line.startswith(sid))
    assert name in piped, piped
    # the WORKFLOW column alike: it was cut to its last 40 characters without a mark ("rly_long_inner_function_name")
    flow = "labd_testflows:a_workflow_function_with_a_rather_long_name_indeed"
    sid = labd("run", flow, "--wait").stdout.strip()
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", labd_tty("ps", "--all"))
    row = next(line for line in shown.splitlines() if line.startswith(sid))
    assert "labd_testflows:a_wor…er_long_name_indeed" in row, row  # both ends, the cut marked
    assert flow in next(line for line in labd("ps", "--all").stdout.splitlines() if line.startswith(sid))


BURN = """\
import subprocess
import sys
import time


def burn(ctx):
    end = time.process_time() + 0.3
    while time.process_time() < end:  # CPU in the runner itself
        pass
    subprocess.run([sys.executable, "-c", "import time\\nend = time.process_time() + 0.3\\n"
                    "while time.process_time() < end: pass"], check=True)  # and in a child it waits for
"""


def test_session_ended_records_the_cpu_time_of_the_runner_and_its_children(shared_daemon, tmp_path) -> None:
    """`session.ended` carries `cpu_seconds`: the user + system CPU of the runner and of the processes it waited
    for (0.3 s each here), and `labd show` prints it: the sampled peak percentage of a session this short reads
    0 %, which said nothing of the work it did."""
    flows = tmp_path / "burn.py"
    flows.write_text(BURN)
    sid = labd("run", f"{flows}:burn", "--wait").stdout.strip()
    with shared_daemon.client() as c:
        (ended,) = c.history(sid, kinds=["session.ended"])
    assert 0.55 <= ended["payload"]["cpu_seconds"] < 30, ended
    show = labd("show", sid).stdout
    assert "; cpu time " in show, show


def test_stop_from_the_cli(shared_daemon) -> None:
    """``labd stop --wait`` stops a running session and reports how it ended; ``labd show`` says who asked it to
    stop: a client, or its wall-time limit (which read as a plain stop request)."""
    sid = labd("run", "demo.sleep", "-p", "seconds=60").stdout.strip()
    out = labd("stop", sid, "--grace", "2", "--wait")
    assert out.returncode == 0
    assert "cancelled: stopped by client (at a step boundary)" in out.stdout
    ended = next(line for line in labd("show", sid).stdout.splitlines() if line.startswith("ended by"))
    assert "step boundary, asked by a client (labd stop or kill)" in ended, ended
    timed = labd("run", "demo.sleep", "-p", "seconds=60", "--timeout", "1s", "--wait").stdout.strip()
    ended = next(line for line in labd("show", timed).stdout.splitlines() if line.startswith("ended by"))
    assert "asked by its limit" in ended and "stop request" not in ended, ended  # it read as someone's stop


def test_cli_errors_are_messages_not_tracebacks(shared_daemon) -> None:
    """Bad input gives a one-line message and exit code 2."""
    for args in (["run", "nope.nope"], ["run", "demo.count", "-p", "n=x"], ["run", "demo.count", "-p", "oops"],
                 ["run", "demo.count", "--memory", "lots"], ["show", "missing"], ["stop", "missing"]):
        r = labd(*args)
        assert r.returncode == 2, args
        assert r.stderr.startswith("labd: ") and "Traceback" not in r.stderr, r.stderr


def test_cli_without_a_daemon_says_how_to_start_one(isolated_env) -> None:
    """With no daemon running, client commands explain what to do."""
    r = labd("ps")
    assert r.returncode == 2
    assert "no labd daemon is running" in r.stderr and "labd serve" in r.stderr
