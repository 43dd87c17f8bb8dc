"""What the CLI prints: live-only ps and its filters, human status, JSON everywhere, numeric node order,
terminal colours vs plain pipes, the DAG as a tree and properly escaped Mermaid / DOT."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

from tests.conftest import wait_until
from tests.integration.cli_support import labd, labd_tty

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_ps_shows_live_sessions_unless_asked(daemon) -> None:
    """`ps` lists live sessions only (with nothing live: nothing, and a hint on stderr, JSON stays []);
    -a adds ended ones; --status, --workflow, --since filter; -q prints ids. (A daemon of its own: it asserts
    on every session listed.)"""
    done = labd("run", "demo.count", "-p", "n=1", "-p", "delay=0", "--follow")
    assert done.returncode == 0
    empty = labd("ps")
    assert empty.returncode == 0 and empty.stdout == "" and "no live sessions" in empty.stderr
    assert labd("ps", "--json").stdout.strip() == "[]"
    live = labd("run", "demo.sleep", "-p", "seconds=60", "--name", "sleeper").stdout.strip()
    rows = json.loads(labd("ps", "--json").stdout)
    assert [r["id"] for r in rows] == [live]
    assert {r["workflow"] for r in json.loads(labd("ps", "-a", "--json").stdout)} == {"demo.count", "demo.sleep"}
    counted = labd("ps", "-a", "-q", "--workflow", "demo.c*").stdout.split()
    assert len(counted) == 1 and live not in counted
    assert labd("ps", "-a", "-q", "--workflow", "sleep").stdout.split() == [live]
    assert len(labd("ps", "-q", "--status", "completed").stdout.split()) == 1
    assert len(labd("ps", "-aq", "--since", "10m").stdout.split()) == 2
    assert labd("ps", "-aq", "--since", "1ms").stdout.split() == []  # both were created before that: left out
    assert labd("ps", "-aq", "--since", "bogus").returncode == 2
    table = labd("ps").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "NAME", "WORKFLOW", "STATUS"] and "sleeper" in table[1]
    assert labd("kill", live).returncode == 0


def test_ps_limit_counts_the_sessions_the_workflow_filter_keeps(shared_daemon) -> None:
    """`ps -a --workflow W --limit N` lists the newest N sessions of W, however many newer sessions of other
    workflows there are (the limit was applied before the filter: an older match was not listed at all)."""
    old = labd("run", "demo.fail", "--name", "older-match")
    assert old.returncode == 0, old.stderr
    for _ in range(3):
        assert labd("run", "demo.count", "-p", "n=1", "-p", "delay=0").returncode == 0
    listed = labd("ps", "-a", "-q", "--workflow", "demo.fai", "--limit", "1").stdout.split()
    assert listed == [old.stdout.strip()], listed
    glob = labd("ps", "-a", "--json", "--workflow", "demo.f*", "--limit", "1")
    assert [r["id"] for r in json.loads(glob.stdout)] == [old.stdout.strip()]
    ages = labd("ps", "-a", "-q", "--workflow", "demo.fai", "--since", "60000d")  # reaching before 1970: all
    assert ages.returncode == 0 and old.stdout.strip() in ages.stdout.split(), ages.stderr


def test_ps_filters_by_name_and_sorts_what_it_lists(shared_daemon) -> None:
    """`ps --name N` keeps sessions whose name contains N (or matches a glob), --limit counting the matches (a newer
    session of another name does not push them out); `--sort` orders them: names naturally (a9 before a10), created
    oldest first, rss the most first; an unknown key is the usage error."""
    ids = {}
    for name in ("sortme-b", "sortme-a10", "sortme-a9", "other"):
        done = labd("run", "demo.count", "-p", "n=1", "-p", "delay=0", "--name", name, "--wait")
        assert done.returncode == 0, done.stderr
        ids[name] = done.stdout.strip()
    assert set(labd("ps", "-a", "-q", "--name", "sortme").stdout.split()) == {
        ids["sortme-b"], ids["sortme-a10"], ids["sortme-a9"]}
    assert labd("ps", "-a", "-q", "--name", "sortme", "--limit", "1").stdout.split() == [ids["sortme-a9"]]
    assert labd("ps", "-a", "-q", "--name", "sortme-a*", "--sort", "name").stdout.split() == [
        ids["sortme-a9"], ids["sortme-a10"]]
    created = json.loads(labd("ps", "-a", "--json", "--name", "sortme", "--sort", "created").stdout)
    assert [r["id"] for r in created] == [ids["sortme-b"], ids["sortme-a10"], ids["sortme-a9"]]
    by_rss = json.loads(labd("ps", "-a", "--json", "--name", "sortme", "--sort", "rss").stdout)
    assert [r["peak_rss"] for r in by_rss] == sorted((r["peak_rss"] for r in by_rss), reverse=True)
    bad = labd("ps", "--sort", "size")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_status_is_for_people_and_json_for_programs(shared_daemon) -> None:
    """`status` prints labelled lines (not raw JSON); --json gives the reply object; both say how much room the home's
    filesystem has and how large the store is (they said nothing of disk space)."""
    human = labd("status").stdout
    assert human.startswith("daemon") and "running, pid" in human and "database" in human and "{" not in human
    data = json.loads(labd("status", "--json").stdout)
    assert {"pid", "home", "db", "running", "counters", "uptime"} <= set(data)
    assert re.search(rf"^sandbox\s+{data['sandbox']['level']} ", human, re.M)  # the level the README promises
    labels = human.splitlines()[:6]  # daemon ... sandbox: one aligned block (sandbox was one column off)
    assert len({len(line) - len(line.split(maxsplit=1)[1]) for line in labels}) == 1, human
    # a daemon running as root says so, in red, beside the sandbox; a user's daemon has no such line
    assert bool(re.search(r"^as root\s+sessions run as root", human, re.M)) is data["sandbox"]["as_root"], human
    # room on the home's filesystem and the store's size: what an admin on a full disk asks first
    disk = data["disk"]
    assert 0 < disk["free"] <= disk["total"] and disk["db_bytes"] > 0 and disk["low"] is False, disk
    assert re.search(r"^disk\s+\S+ free of \S+ on the home's filesystem; database \S+$", human, re.M), human


def test_json_on_every_data_command(shared_daemon) -> None:
    """history, files, cost, approvals, show, workflows each take --json and print one JSON document."""
    sid = labd("run", "demo.compute", "-p", "rounds=1", "-p", "work=10", "--follow").stderr.split()[2]
    for args in (["history", sid], ["files", sid], ["cost", sid], ["approvals", "-a"], ["show", sid],
                 ["workflows"], ["dag", sid, "--format", "json"], ["stop", sid]):
        r = labd(*args, "--json") if args[0] != "dag" else labd(*args)
        assert r.returncode == 0, (args, r.stderr)
        doc = json.loads(r.stdout)
        if args[0] == "stop":  # ended already: said in JSON, as for a list of sessions (it was exit 2, no JSON)
            assert doc["error"] == "not_running", doc
    hist = json.loads(labd("history", sid, "--json").stdout)
    assert [h["to_status"] for h in hist if h["node_id"] is None][-1] == "completed"


def test_node_columns_sort_numerically(shared_daemon) -> None:
    """With ten and more nodes, n2 comes before n10 in the NODE column (the store orders them as text)."""
    r = labd("run", "planning_and_control", "--follow")
    assert r.returncode == 0, r.stderr
    sid = r.stderr.split()[2]
    cost = labd("cost", sid).stdout
    table = cost.split("NODE", 1)[1].split("\n\n", 1)[0]  # the NODE table only (a STEP table follows)
    nodes = [line.split()[0] for line in table.splitlines()[1:] if line.strip()]
    assert any(int(n[1:]) >= 10 for n in nodes) and any(int(n[1:]) < 10 for n in nodes)
    assert nodes == sorted(nodes, key=lambda n: int(n[1:]))
    show = labd("show", sid).stdout
    listed = re.findall(r"^(n\d+)\s", show, re.M)
    assert listed == sorted(listed, key=lambda n: int(n[1:])) and any(int(n[1:]) >= 10 for n in listed)


def _resumed_once(c, tmp_path: Path) -> str:
    """A session whose first run failed at its third step and whose resume completed it."""
    counter = tmp_path / "counts"
    counter.mkdir()
    sid = c.start("labd_testflows:durable_four", params={"counter": str(counter)})
    wait_until(lambda: c.session(sid)["status"] == "failed", timeout=60, what="the first run's failure")
    c.resume(sid)
    wait_until(lambda: c.session(sid)["status"] == "completed", timeout=60, what="the resumed run")
    return sid


def test_cost_step_table_of_a_resumed_session_tells_its_runs_apart(shared_daemon, tmp_path: Path) -> None:
    """`labd cost` of a resumed session: the step that failed and ran again is two steps of one name; the STEP table
    gives each row its node id (NODE, STEP, ...), in the order they ran, so every row is told apart (before: the
    name alone, twice, and no way to tell which run's step a row was)."""
    with shared_daemon.client() as c:
        sid = _resumed_once(c, tmp_path)
        by_step = c.cost(sid)["by_step"]
    threes = [s["node_id"] for s in by_step if s["name"] == "three"]
    assert len(threes) == 2 and len(set(threes)) == 2, by_step  # the failed run's and the resume's
    r = labd("cost", sid)
    assert r.returncode == 0, r.stderr
    header, *lines = r.stdout.split("\n\n")[-1].strip().splitlines()  # the STEP table is the last one
    assert header.split() == ["NODE", "STEP", "CALLS", "PROMPT", "COMPLETION", "COST"], r.stdout
    rows = [tuple(line.split()[:2]) for line in lines]
    assert sorted(rows) == sorted((s["node_id"], s["name"]) for s in by_step) and len(set(rows)) == len(rows)
    assert [n for n, name in rows if name == "three"] == sorted(threes, key=lambda n: int(n[1:]))
    assert [n for n, _ in rows] == sorted((n for n, _ in rows), key=lambda n: int(n[1:]))  # the order they ran


def test_show_and_compare_of_a_resumed_session_count_every_run(shared_daemon, tmp_path: Path) -> None:
    """A resumed session ran in two runs: ``session.get`` says so (``runs``, ``earlier_runs_seconds``: the first run's
    time, from its state history), ``labd show`` says ``ran X in 2 runs (the last Y)`` and compare's duration is both
    runs (they gave the last run's time only: "ran 3s" of a session that ran for days before its resume)."""
    with shared_daemon.client() as c:
        sid = _resumed_once(c, tmp_path)
        s = c.session(sid)
        history = [h for h in c.request("session.history", session=sid)["history"] if h["node_id"] is None]
        other = c.start("demo.count", params={"n": 1, "delay": 0})  # compare needs two different sessions
        c.wait(other, timeout=60)
        totals = c.request("sessions.compare", sessions=[sid, other])["totals"]
    # a run starts at `running` from created, starting or queued (the runner's start can be stored before the
    # daemon's launch: created -> running), as store/attempts counts runs
    ran = [h["ts"] for h in history
           if h["to_status"] == "running" and h["from_status"] in ("created", "starting", "queued")]
    failed = next(h["ts"] for h in history if h["to_status"] == "failed")
    assert len(ran) == 2 and s["runs"] == 2, (history, s)
    assert abs(s["earlier_runs_seconds"] - (failed - ran[0])) < 1e-6
    last = s["ended_at"] - s["started_at"]
    assert s["started_at"] == ran[1]  # the row's own times are the last run's
    assert abs(totals[0]["duration"] - (last + s["earlier_runs_seconds"])) < 1e-6
    shown = labd("show", sid)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"ran \S+ in 2 runs \(the last \S+\)", shown.stdout), shown.stdout


def test_colours_on_a_terminal_plain_text_in_pipes(shared_daemon) -> None:
    """On a terminal `ps -a` draws a table with coloured statuses; NO_COLOR (or --no-color) removes the
    colours; in a pipe there is no escape code at all."""
    labd("run", "demo.count", "-p", "n=1", "-p", "delay=0", "--follow")
    tty = labd_tty("ps", "-a")
    assert "\x1b[34m" in tty and "completed" in ANSI.sub("", tty)  # blue status
    for extra_env, args in (({"NO_COLOR": "1"}, ["ps", "-a"]), ({}, ["ps", "-a", "--no-color"])):
        plain_tty = labd_tty(*args, env=extra_env)
        assert not re.search(r"\x1b\[(3\d|9\d)", plain_tty) and "completed" in plain_tty
    piped = labd("ps", "-a")
    assert "\x1b" not in piped.stdout and "completed" in piped.stdout


def test_dag_is_a_tree_by_default_and_exports_escape_names(shared_daemon, tmp_path: Path) -> None:
    """`labd dag` draws the steps as a tree; names with quotes, brackets, #, & and newlines come out as valid
    Mermaid (entity codes) and DOT (backslash escapes); `--format json` prints the graph the reply carries once."""
    (tmp_path / "odd.py").write_text(textwrap.dedent('''
        def odd(ctx):
            with ctx.step('say "hi" <b>#1'):
                with ctx.step("inner\\\\path\\nline2"):
                    pass
                with ctx.step("a &amp; b"):
                    pass
    '''))
    r = labd("run", "./odd.py", "--follow", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sid = r.stderr.split()[2]
    tree = labd("dag", sid).stdout.splitlines()
    assert tree[0].startswith('n1 say "hi" <b>#1') and tree[1].startswith("├── n2 inner")
    mermaid = labd("dag", sid, "--format", "mermaid").stdout
    assert 'n1["say #quot;hi#quot; #lt;b#gt;#35;1 · completed"]' in mermaid
    assert "\\nline2" not in mermaid and '"hi"' not in mermaid
    assert '["a #38;amp; b · completed"]' in mermaid  # shown as typed, not as "a & b"
    dot = labd("dag", sid, "--format", "dot").stdout
    assert r'"n1" [label="say \"hi\" <b>#1 · completed"' in dot
    assert r'label="inner\\path\nline2 · completed"' in dot
    # json: the graph, sent once (the reply's `dag`; its `text` is null instead of the same graph again)
    as_json = json.loads(labd("dag", sid, "--format", "json").stdout)
    with shared_daemon.client() as c:
        reply = c.dag(sid)
    assert reply["text"] is None and as_json == reply["dag"]
    assert [n["name"] for n in as_json["nodes"]][:2] == ['say "hi" <b>#1', "inner\\path\nline2"]
    # --newest: only the newest nodes, and the CLI says how many it left out (on stderr: stdout stays the graph)
    part = labd("dag", sid, "--newest", "2")
    assert part.stdout.startswith("n2 inner") and "\nn3 a &amp; b" in part.stdout and "n1 " not in part.stdout
    assert "1 older one left out" in part.stderr
    as_json = json.loads(labd("dag", sid, "--format", "json", "--newest", "2").stdout)
    assert [n["node_id"] for n in as_json["nodes"]] == ["n2", "n3"] and as_json["nodes_omitted"] == 1
    bad = labd("dag", sid, "--newest", "0")
    assert bad.returncode == 2 and "1 to 100000" in bad.stderr


def test_a_line_break_in_a_value_keeps_its_table_row_on_one_line(shared_daemon, tmp_path: Path) -> None:
    """A value with line breaks (an approval's prompt here; a session name recorded before names had to be
    printable alike) is shown on its row's one line, in a pipe and on a terminal: it used to break the row in two
    and push the rest under the ID column."""
    flows = tmp_path / "asks.py"
    flows.write_text("def ask(ctx):\n    return ctx.approval('choose', 'first\\nsecond\\tthird', options=['a', 'b'])\n")
    with shared_daemon.client() as c:
        sid = c.start(f"{flows}:ask", params={})
        wait_until(lambda: c.approvals(session=sid), timeout=60, what="the approval asked for")
        for out in (labd("approvals").stdout, ANSI.sub("", labd_tty("approvals"))):
            (row,) = [line for line in out.splitlines() if sid in line]
            assert "first second third" in row and "choose" in row, out
            assert not any(line.strip().startswith("second") for line in out.splitlines()), out
        c.resolve(sid, "a")
        assert c.wait(sid, timeout=60)["status"] == "completed"


def test_approvals_full_shows_the_whole_prompt_and_its_context(shared_daemon, tmp_path: Path) -> None:
    """`labd approvals --full` is what a human reads to decide: each approval's whole prompt (every line, past the
    list's 60 characters) and its context (the plan), where it used to print the same cut table as without it."""
    flows = tmp_path / "plan.py"
    flows.write_text(textwrap.dedent("""\
        def ask(ctx):
            prompt = "Approve this plan:" + "".join(f"\\n- step {i}: " + "x" * 50 + f" end{i}" for i in range(3))
            return ctx.approval("after_planning", prompt, options=["approve", "reject"],
                                context={"plan": [{"goal": "measure the baseline"}]})
        """))
    with shared_daemon.client() as c:
        sid = c.start(f"{flows}:ask", params={})
        wait_until(lambda: c.approvals(session=sid), timeout=60, what="the approval asked for")
        out = labd("approvals", sid, "--full")
        assert out.returncode == 0, out.stderr
        assert "after_planning" in out.stdout and "[approve/reject]" in out.stdout, out.stdout
        assert all(f"- step {i}: {'x' * 50} end{i}" in out.stdout for i in range(3)), out.stdout
        assert '"goal": "measure the baseline"' in out.stdout, out.stdout
        c.resolve(sid, "approve")
        assert c.wait(sid, timeout=60)["status"] == "completed"


def test_a_reader_that_goes_away_is_a_quiet_exit(tmp_path: Path) -> None:
    """`labd paths | head -0`: when the pipe's reader is gone before labd writes, labd exits 0 and says nothing
    on stderr (no traceback, no "Exception ignored ... BrokenPipeError" from Python's flush at exit)."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader at all: the first write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "labd", "--home", str(tmp_path / "home"), "paths"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_run_wait_prints_the_id_then_waits_quietly_and_exits_with_the_outcome(shared_daemon) -> None:
    """`labd run W --wait` (it suggested "--agent?" before) prints the session's id, waits for the end without
    printing the session's output, and exits 0 if it completed; 1 if not, saying how it ended on stderr; with
    --json one object with the final status."""
    ok = labd("run", "demo.count", "-p", "n=2", "-p", "delay=0", "--wait")
    assert ok.returncode == 0, ok.stderr
    sid = ok.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{12}", sid) and "count" not in ok.stdout
    assert json.loads(labd("show", sid, "--json").stdout)["status"] == "completed"
    bad = labd("run", "demo.fail", "--wait")
    assert bad.returncode == 1 and re.fullmatch(r"[0-9a-f]{12}", bad.stdout.strip())
    assert f"session {bad.stdout.strip()} ended failed" in bad.stderr
    as_json = json.loads(labd("run", "demo.fail", "--wait", "--json").stdout)
    assert as_json["status"] == "failed" and as_json["reason"] and set(as_json) == {"session", "status", "reason"}


def test_wait_for_sessions_exits_with_how_they_all_ended(shared_daemon) -> None:
    """`labd wait S1 S2` (ids or names) returns once every one has ended: 0 if all completed, 1 if one did not
    (named on stderr with how it ended), 2 when `--timeout` passes first (saying how many had not ended). Without
    sessions it still waits for the daemon. Before, `labd wait` took no sessions: a script that started several
    had to poll `labd show` for each."""
    ok = [labd("run", "demo.count", "--name", f"waited-{i}", "-p", "n=2", "-p", "delay=0.1").stdout.strip()
          for i in range(2)]
    bad = labd("run", "demo.fail").stdout.strip()
    both = labd("wait", ok[0], "waited-1")
    assert both.returncode == 0 and both.stderr == "", both.stderr
    assert all(json.loads(labd("show", sid, "--json").stdout)["status"] == "completed" for sid in ok)
    failed = labd("wait", ok[0], bad)
    assert failed.returncode == 1 and f"session {bad} ended failed" in failed.stderr, failed.stderr
    sleeper = labd("run", "demo.sleep", "-p", "seconds=60").stdout.strip()
    wait_until(lambda: json.loads(labd("show", sleeper, "--json").stdout)["status"] == "running", timeout=60,
               what="the sleeper running")  # `run` answers once it is created, before its runner starts
    late = labd("wait", ok[0], sleeper, "--timeout", "1s")
    assert late.returncode == 2 and "1 of 2 sessions had not ended within 1.0s" in late.stderr, late.stderr
    # an unknown reference is refused before anything is waited for (it was reported after the others ended)
    typo = labd("wait", sleeper, "no-such-session")  # (waited for, it would have returned once the 60 s ended)
    assert typo.returncode == 2 and "no-such-session" in typo.stderr, typo.stderr
    assert json.loads(labd("show", sleeper, "--json").stdout)["status"] == "running"
    assert labd("stop", sleeper, "--grace", "1", "--wait").returncode == 0
    assert labd("wait").returncode == 0  # the daemon answers


def test_a_typo_in_a_status_or_type_list_names_the_value_and_the_choices(shared_daemon) -> None:
    """`--status` and `--type` values are checked by the CLI: a typo reads `--status: unknown value 'runing' (one
    of: created, ...)` with exit status 2, where the daemon's "field 'status' must be a list of ..." was shown for a
    single value; good values, comma-separated or repeated, still work."""
    for args, words in ((["ps", "--status", "runing"], "--status: unknown value 'runing' (one of: created, queued"),
                        (["ps", "--status", "running,bogus", "--status", "paused"], "unknown value 'bogus'"),
                        (["search", "x", "--type", "step,mesage"], "--type: unknown value 'mesage' (one of: session,"),
                        (["search", "x", "--status", "done"], "--status: unknown value 'done'"),
                        (["prune", "--older-than", "1d", "--status", "running"],
                         "--status: unknown value 'running' (one of: completed, failed, cancelled, lost)")):
        r = labd(*args)
        assert r.returncode == 2 and words in r.stderr, (args, r.stderr)
        assert "must be a list" not in r.stderr
    assert labd("ps", "--status", "running,paused", "--status", "queued").returncode == 0
    assert labd("search", "x", "--type", "step,message", "--status", "completed").returncode == 0


def test_an_output_encoding_without_the_characters_shows_escapes(shared_daemon) -> None:
    """With an output encoding that lacks a character labd prints (``PYTHONIOENCODING=ascii``: the tree's lines,
    a check mark), ``labd dag`` and ``labd workflows`` show it as an escape and exit 0 (they ended with a
    ``UnicodeEncodeError`` traceback, where ``labd logs`` already escaped)."""
    import os

    sid = labd("run", "planning_and_control", "-p", "task=Step 1 of 2: fit. Step 2 of 2: plot", "--wait").stdout.strip()
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    for args in (("dag", sid), ("workflows",)):
        out = labd(*args, env=env)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (args, out.stderr[-2000:])
        assert "\\u" in out.stdout and out.stdout.isascii(), (args, out.stdout[:500])


def test_a_file_name_with_a_line_break_stays_on_its_line(shared_daemon) -> None:
    """A file named ``"new\\n  + forged.txt"``: `labd logs` and `labd files` show it on one line, its break as
    ``\\n`` (`files` in a pipe too). Printed as it was, its second half read as an activity line of its own."""
    ran = labd("run", "labd_testflows:newline_name", "--wait")
    sid = ran.stdout.strip()
    assert ran.returncode == 0 and sid, ran
    for args, pipe_too in ((("logs", sid), False), (("files", sid), True)):  # piped, logs prints the output alone
        piped = labd(*args)
        assert piped.returncode == 0, piped
        for shown in ([piped.stdout] if pipe_too else []) + [ANSI.sub("", labd_tty(*args))]:
            assert "new\\n  + forged.txt" in shown, shown
            assert not any(line.lstrip().startswith("+ forged") for line in shown.splitlines()), shown
