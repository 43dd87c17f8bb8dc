"""CLI options people type: global options anywhere, --version, units with hints, params, paths, completion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import labd as labd_pkg
from tests.conftest import kill_runners, wait_until
from tests.integration.cli_support import labd


def test_global_options_go_before_or_after_the_command(isolated_env: Path, tmp_path: Path) -> None:
    """`labd serve --home DIR` (as the README shows) starts a daemon on DIR; `labd ps --home DIR` and
    `labd --home DIR ps` both reach it; --version prints the package version."""
    home = tmp_path / "elsewhere"
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "labd", "serve", "--home", str(home), "--log-format", "json"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: labd("status", "--home", str(home), "--json").returncode == 0, timeout=30,
                   what="the daemon on --home")
        after, before = labd("ps", "-a", "--home", str(home)), labd("--home", str(home), "ps", "-a")
        assert after.returncode == before.returncode == 0
        assert json.loads(labd("status", "--json", "--home", str(home)).stdout)["home"] == str(home)
        assert labd("ps").returncode == 2  # the default home ($LABD_HOME) has no daemon
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        log.close()
        kill_runners(home)
    v = labd("--version")
    assert v.returncode == 0 and v.stdout.strip() == f"labd {labd_pkg.__version__}"


def test_units_people_mean(shared_daemon) -> None:
    """--memory needs a unit (512 is refused, saying `512M`), --cpus 0.5 is half a core (= --cpu 50%),
    --cpu 50 without % is refused asking "did you mean --cpu 50%?" (before: it advised --cpus 50, fifty cores),
    --timeout takes 1h30m; the limits reach the session."""
    r = labd("run", "demo.count", "--memory", "512")
    assert r.returncode == 2 and "--memory: bad size '512'" in r.stderr and "add a unit: 512M" in r.stderr
    r = labd("run", "demo.count", "--cpu", "50")
    assert r.returncode == 2 and "did you mean --cpu 50%?" in r.stderr and "--cpus 50" not in r.stderr
    r = labd("run", "demo.count", "--cpu", "50%", "--cpus", "0.5")
    assert r.returncode == 2 and "not both" in r.stderr
    r = labd("run", "demo.count", "--timeout", "1h30")
    assert r.returncode == 2 and "bad duration" in r.stderr
    sid = labd("run", "demo.sleep", "-p", "seconds=60", "--memory", "256M", "--cpus", "0.5",
               "--timeout", "1h30m").stdout.strip()
    lim = json.loads(labd("show", sid, "--json").stdout)["limits"]
    assert lim["memory"] == 256 * 2**20 and lim["cpu"] == 50.0 and lim["timeout"] == 5400.0
    sid2 = labd("run", "demo.sleep", "-p", "seconds=60", "--cpu", "25%").stdout.strip()
    assert json.loads(labd("show", sid2, "--json").stdout)["limits"]["cpu"] == 25.0
    for s in (sid, sid2):
        assert labd("kill", s).returncode == 0


def test_modify_without_feedback_says_how_to_give_it(shared_daemon) -> None:
    """`labd modify SESSION` without --feedback is refused with the command that gives it (it said only "needs
    feedback"), before any session is looked at."""
    r = labd("modify", "abc123")
    assert r.returncode == 2 and "[bad_request]" in r.stderr, r.stderr
    assert 'labd modify abc123 --feedback "..."' in r.stderr, r.stderr


def test_a_ray_session_without_a_ray_launcher_is_refused_whatever_its_cpus(shared_daemon) -> None:
    """README's ``labd run flows.py:train --on ray --cpus 4``: the CPUs are the Ray node's, so more than this
    machine's cores is no error of the CLI's (it was: "at most 2 (cores here)"); on a daemon without a Ray launcher
    the start is refused saying how to configure one, and no session is left behind failed at launch (one was).
    Locally, more CPUs than this machine has is still refused, pointing at --on ray."""
    before = _session_ids()
    many = str((os.cpu_count() or 1) * 4)
    r = labd("run", "demo.count", "--on", "ray", "--cpus", many)
    assert r.returncode == 2 and "no Ray launcher" in r.stderr and '[launcher] kind = "ray"' in r.stderr, r.stderr
    assert "cores here" not in r.stderr
    r = labd("run", "demo.count", "--cpus", many)
    assert r.returncode == 2 and "cores here" in r.stderr and "--on ray" in r.stderr
    assert _session_ids() == before


def _session_ids() -> set[str]:
    """The ids `labd ps -a --json` lists (the daemon is the module's: other tests' sessions are there too)."""
    ps = labd("ps", "-a", "--limit", "10000", "--json")
    assert ps.returncode == 0, ps.stderr
    return {s["id"] for s in json.loads(ps.stdout)}


def test_a_parameter_given_twice_is_refused(shared_daemon) -> None:
    """`-p n=5 -p n=6` is an error naming both values, not a silent last-wins; nothing is started."""
    before = _session_ids()
    r = labd("run", "demo.count", "-p", "n=5", "-p", "n=6")
    assert r.returncode == 2 and "'n' given twice ('5' and '6')" in r.stderr
    assert _session_ids() == before


def test_paths_tells_where_things_are(isolated_env: Path) -> None:
    """`labd paths` prints home, runtime dir, connection file, database and logs, with no daemon running;
    --json has the same in stable fields."""
    r = labd("paths")
    assert r.returncode == 0
    for label in ("home", "runtime dir", "connection file", "database", "daemon log"):
        assert label in r.stdout
    p = json.loads(labd("paths", "--json").stdout)
    assert p["home"] == str(isolated_env.resolve()) and p["daemon_running"] is False
    assert p["connection_file"].startswith(p["runtime_dir"])
    assert p["runtime_dir"].startswith(os.environ["XDG_RUNTIME_DIR"])
    assert p["database"] == f"sqlite:///{isolated_env.resolve() / 'labd.db'}"
    assert {"config_files", "sessions_dir", "daemon_log"} <= set(p)


def test_paths_reports_the_running_daemons_database(shared_daemon) -> None:
    """With a daemon up, the database comes from it."""
    p = json.loads(labd("paths", "--json").stdout)
    assert p["daemon_running"] is True and p["database_from"] == "the running daemon"


def test_completion_scripts(shared_daemon, tmp_path: Path) -> None:
    """bash completion (a syntax-checked script) completes commands, options, session ids from the daemon and
    the actions of commands that take one (`labd skills list`); zsh and fish scripts are produced and name every
    command and those actions."""
    sid = labd("run", "demo.count", "-p", "n=1", "-p", "delay=0").stdout.strip()
    script = labd("completion", "bash").stdout
    (tmp_path / "labd.bash").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "labd.bash")]).returncode == 0

    def complete(*words: str) -> list[str]:
        cmd = (f"source {tmp_path / 'labd.bash'}; COMP_WORDS=({' '.join(repr(w) for w in words)}); "
               f"COMP_CWORD={len(words) - 1}; _labd; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env).stdout.split()

    assert complete("labd", "ru") == ["run"]
    assert "--follow" in complete("labd", "run", "--f")
    assert complete("labd", "run", "--on-budget", "") == ["stop", "pause"]
    assert sid in complete("labd", "show", "")
    assert "demo.count" in complete("labd", "run", "demo.c")
    # a command whose first word is an action offers its actions (it offered session ids)
    assert complete("labd", "skills", "") == ["list", "save", "show", "rm", "export", "import"]
    assert complete("labd", "service", "in") == ["install"]
    assert complete("labd", "completion", "") == ["bash", "zsh", "fish"]
    zsh, fish = labd("completion", "zsh").stdout, labd("completion", "fish").stdout
    assert zsh.startswith("#compdef labd") and "_labd_sessions" in zsh
    for name in ("run", "ps", "logs", "paths", "completion", "dag"):
        assert f"'{name}:" in zsh and f"-a {name} " in fish
    assert "skills) _arguments" in zsh and "'1:action:(list save show rm export import)'" in zsh
    assert "complete -c labd -n '__fish_seen_subcommand_from skills' -a 'list save show rm export import'" in fish


def test_session_arguments_complete_to_names_as_well_as_ids(daemon, tmp_path: Path) -> None:
    """A session argument takes a name as well as an id, so bash completion offers both: ids, then each name once
    (the latest session named so is the one it means), a name holding a ':' (where bash splits words) completing
    after the ':' too. A name that is not a plain shell word is not offered (its id is) and is never expanded: a
    name made of a command substitution runs nothing. zsh and fish scripts ask for the same words.
    (A daemon of its own: it asserts on every word offered, so no other test's sessions may be there.)"""
    pwned = tmp_path / "pwned"
    named = {"alpha-study": [], "py:study": [], "my run": [], f"$(touch {pwned})": []}
    for name in [*named, "alpha-study"]:
        r = labd("run", "demo.count", "-p", "n=1", "-p", "delay=0", "--name", name)
        assert r.returncode == 0, r.stderr
        named[name].append(r.stdout.strip())
    script = tmp_path / "labd.bash"
    script.write_text(labd("completion", "bash").stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(words).replace(" : ", ":")  # bash splits "py:st" into py, :, st; the line keeps it whole
        cmd = (f"source {script}; COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}; "
               f"COMP_LINE={line!r}; COMP_POINT={len(line)}; _labd; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env).stdout.splitlines()

    offered = complete("labd", "show", "")
    ids = [sid for sids in named.values() for sid in sids]
    assert set(ids) <= set(offered)
    assert [w for w in offered if w not in ids] == ["alpha-study", "py:study"]  # names once, newest first
    assert complete("labd", "stop", "alp") == ["alpha-study"]
    assert complete("labd", "logs", "py") == ["py:study"]
    assert complete("labd", "logs", "py", ":", "st") == ["study"]  # bash puts back only the piece after the ':'
    assert complete("labd", "show", named["my run"][0][:6]) == named["my run"]
    assert not pwned.exists()
    assert labd("show", "alpha-study").returncode == 0  # what is offered is taken
    zsh, fish = labd("completion", "zsh").stdout, labd("completion", "fish").stdout
    assert "labd completion zsh --sessions" in zsh and "labd completion fish --sessions" in fish
    assert "labd ps -aq" not in zsh + fish


def test_wait_and_shutdown_take_durations_and_top_wants_a_terminal(daemon) -> None:
    """`labd wait --timeout 30s` and `labd shutdown --timeout 1m` take the durations `run --timeout` takes (they took
    seconds only: "invalid float value: '30s'"); a bad one names the option. `labd top` with no terminal exits 2
    with one line saying what to use instead (it wrote the dashboard's escape codes into the pipe and never ended).
    (A daemon of its own: `labd shutdown` stops it.)"""
    assert labd("wait", "--timeout", "30s").returncode == 0
    bad = labd("shutdown", "--timeout", "1x")
    assert bad.returncode == 2 and "argument --timeout: bad duration '1x'" in bad.stderr
    top = labd("top", timeout=30)
    assert top.returncode == 2 and top.stdout == ""
    assert top.stderr.strip() == ("labd: top needs a terminal (it is a full-screen dashboard); in scripts use "
                                  "`labd ps --json` or `labd status --json`")
    assert labd("shutdown", "--timeout", "1m").returncode == 0


def test_pause_and_resume_say_when_there_is_nothing_to_do(shared_daemon) -> None:
    """`labd pause` of a session already paused says so (and records no second request); `labd resume` of a running
    session says it is not paused (before: both printed "... requested" as if something would happen)."""
    sid = labd("run", "demo.count", "-p", "n=400", "-p", "delay=0.05").stdout.strip()
    with shared_daemon.client() as c:
        wait_until(lambda: c.session(sid)["status"] == "running", timeout=60, what="running")
        r = labd("resume", sid)
        assert r.returncode == 0 and f"session {sid} is not paused (status running)" in r.stdout
        assert "pause requested for" in labd("pause", sid).stdout
        wait_until(lambda: c.session(sid)["status"] == "paused", timeout=60, what="paused")
        again = labd("pause", sid)
        assert again.returncode == 0 and f"session {sid} is already paused" in again.stdout
        requests = [e for e in c.history(sid) if e["kind"] == "session.pause_requested"]
        assert len(requests) == 1
        assert f"resume requested for {sid}" in labd("resume", sid).stdout
        wait_until(lambda: c.session(sid)["status"] == "running", timeout=60, what="running again")
        c.kill(sid)


def test_a_pause_not_reached_yet_shows_in_ps_and_show(shared_daemon) -> None:
    """A session asked to pause inside a long step reads `pausing` in `labd ps` (and `labd top`, which shares the
    cell) and `labd show` says who asked and why, until it pauses or a resume cancels the pause (before: nothing
    said it had been asked, outside the dashboard tab that asked)."""
    sid = labd("run", "demo.sleep", "-p", "seconds=120").stdout.strip()
    with shared_daemon.client() as c:
        wait_until(lambda: c.session(sid)["status"] == "running", timeout=60, what="running")
        try:
            assert "pause requested for" in labd("pause", sid, "--reason", "lunch").stdout
            row = next(line for line in labd("ps").stdout.splitlines() if line.startswith(sid))
            assert " pausing " in f" {row} ", row
            shown = labd("show", sid).stdout
            status = next(line for line in shown.splitlines() if line.startswith("status"))
            assert status.split()[1] == "pausing", status
            assert status.endswith("(pause asked by client: lunch; it pauses at its next step)"), status
            assert json.loads(labd("show", sid, "--json").stdout)["pausing"] == {"by": "client", "reason": "lunch"}
            labd("resume", sid)
            row = next(line for line in labd("ps").stdout.splitlines() if line.startswith(sid))
            assert " running " in f" {row} " and "pausing" not in row, row
        finally:
            c.kill(sid)


def test_a_mistyped_option_is_named_by_its_command_with_the_nearest_one(isolated_env: Path) -> None:
    """`labd run demo.count --memroy 1G` is refused by `labd run`'s own parser (its usage, not labd's list of 40
    commands), suggesting --memory; nothing is started (no daemon is even needed). A command's action
    (`labd remote list --jsn`) gets the action's usage and options."""
    r = labd("run", "demo.count", "--memroy", "1G")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("usage: labd run ")
    assert "labd run: error: unrecognized arguments: --memroy (did you mean --memory?)" in r.stderr
    ps = labd("ps", "--stauts", "running")
    assert ps.returncode == 2
    assert "labd ps: error: unrecognized arguments: --stauts (did you mean --status?)" in ps.stderr
    nested = labd("remote", "list", "--jsn")  # a command's action: its own parser, not the command's
    assert nested.returncode == 2 and nested.stderr.startswith("usage: labd remote list ")
    assert "labd remote list: error: unrecognized arguments: --jsn (did you mean --json?)" in nested.stderr


def test_json_where_people_put_it(shared_daemon) -> None:
    """`labd run --follow --json` prints the live record as JSON lines to its end (it ignored --json and printed
    text); `labd remote list --json` works as `labd remote --json list` does (it was refused)."""
    r = labd("run", "demo.count", "-p", "n=2", "-p", "delay=0", "--follow", "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["kind"] == "session.created" and events[-1]["kind"] == "session.ended"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for argv in (("remote", "list", "--json"), ("remote", "--json", "list")):
        out = labd(*argv)
        assert out.returncode == 0 and json.loads(out.stdout) == {"listen": None, "clients": []}, out.stderr


def test_an_unknown_command_gets_the_nearest_ones(isolated_env: Path) -> None:
    """`labd psx` exits 2 naming the nearest command (argparse listed all forty), also after global options;
    an unknown word with nothing near says where the list is."""
    r = labd("psx")
    assert r.returncode == 2 and r.stderr.strip().endswith(
        "labd: error: unknown command 'psx'; did you mean ps? (labd --help lists the commands)")
    r = labd("--home", str(isolated_env), "shwo", "x")
    assert r.returncode == 2 and "unknown command 'shwo'; did you mean show?" in r.stderr
    r = labd("zzzz")
    assert r.returncode == 2 and r.stderr.strip().endswith(
        "labd: error: unknown command 'zzzz' (labd --help lists the commands)")
    assert labd("--home", str(isolated_env), "paths").returncode == 0  # known commands are untouched


def test_options_that_did_nothing_are_refused(shared_daemon, tmp_path: Path) -> None:
    """Options that were accepted and silently did nothing now say so, exit 2, and start nothing: `run --raw`
    without `-f` (it shapes what -f prints), `run --name ''`, and `--connect` on `serve` and `service` (they act
    on this machine only). The help names --priority's range and says what `serve --log-level` is."""
    before = _session_ids()
    for args, said in ((["run", "demo.count", "--raw"], "--raw shapes what --follow prints"),
                       (["run", "demo.count", "--name", " "], "--name must not be empty"),
                       (["serve", "--check", "--connect", str(tmp_path / "c.json")], "takes no --connect"),
                       (["service", "--connect", str(tmp_path / "c.json"), "status"], "takes no --connect")):
        r = labd(*args)
        assert r.returncode == 2 and said in r.stderr, (args, r.stderr)
    assert _session_ids() == before
    assert "-1000 to 1000" in labd("run", "--help").stdout
    assert "the least severe log records written" in labd("serve", "--help").stdout


def test_stop_and_kill_act_on_many_sessions_at_once(client) -> None:
    """`labd stop --tag batch=x` stops every live session of a batch (one line each) and leaves the others;
    `labd kill A B C` kills several; a session that has ended already is said, not an error, so a script's list that
    changed under it still succeeds; an unknown one fails the command (exit 1) after the others were acted on;
    `--json` gives one reply per session. Before, each took one session, and a batch took a shell loop."""
    batch = [client.start("demo.sleep", params={"seconds": 300}, tags={"batch": "x"}) for _ in range(3)]
    other = client.start("demo.sleep", params={"seconds": 300})
    done = client.start("demo.count", params={"n": 1, "delay": 0})
    client.wait(done, timeout=60)
    for sid in [*batch, other]:
        wait_until(lambda s=sid: client.session(s)["status"] == "running", timeout=60, what="running")
    stop = labd("stop", "--tag", "batch=x", "--grace", "0", "--wait")
    assert stop.returncode == 0, stop.stderr
    assert sorted(line.split()[1] for line in stop.stdout.splitlines()) == sorted(batch), stop.stdout
    assert all(client.session(s)["status"] == "cancelled" for s in batch)
    assert client.session(other)["status"] == "running"
    kill = labd("kill", other, done, "nosuchsession")
    assert kill.returncode == 1, (kill.stdout, kill.stderr)
    assert f"killing {other}" in kill.stdout and f"{done}: session {done} is not running" in kill.stdout
    assert "nosuchsession" in kill.stderr and "[not_found]" in kill.stderr, kill.stderr
    client.wait(other, timeout=60)
    again = labd("kill", other, done, "--json")
    assert again.returncode == 0 and [r["error"] for r in json.loads(again.stdout)] == ["not_running"] * 2
    # one session named: the same answer as in a list (it exited 2, with --tag 0); an unknown one still fails
    for cmd in ("stop", "kill"):
        single = labd(cmd, done)
        assert single.returncode == 0 and f"{done}: session {done} is not running" in single.stdout, single
        assert json.loads(labd(cmd, done, "--json").stdout)["error"] == "not_running"
        assert labd(cmd, "nosuchsession").returncode != 0
    assert labd("stop").returncode == 2  # nothing named, nothing selected


def test_a_priority_out_of_range_and_a_too_small_memory_are_said_in_the_options_terms(isolated_env: Path) -> None:
    """`--priority 5000` is refused with the usage line, like `--priority abc` (it came back from the daemon as
    "field 'priority' must be an integer"); `--memory 5M` says it is below what a runner needs, in M (it said "sizes
    as text take a unit" to someone who had given one). Both before any daemon is asked."""
    high = labd("run", "demo.count", "--priority", "5000")
    assert high.returncode == 2 and "usage:" in high.stderr and "must be -1000 to 1000" in high.stderr, high.stderr
    word = labd("run", "demo.count", "--priority", "abc")
    assert word.returncode == 2 and "must be a whole number -1000 to 1000, not 'abc'" in word.stderr, word.stderr
    small = labd("run", "demo.count", "--memory", "5M")
    assert small.returncode == 2, small.stderr
    assert "--memory 5M is below what a runner needs to start (32M)" in small.stderr, small.stderr


def test_a_quiet_wait_says_when_the_session_paused_for_its_budget(shared_daemon) -> None:
    """`labd run ... --on-budget pause --wait` said nothing while the session sat paused for its budget (ten minutes
    of silence in a review): it now says on stderr that the session paused, and how to go on; once resumed with
    a new budget, it waits on and exits 0 when the session completes."""
    proc = subprocess.Popen([sys.executable, "-m", "labd", "run", "planning_and_control", "--budget", "0.0004",
                             "--on-budget", "pause", "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ)
    try:
        sid = proc.stdout.readline().strip()  # type: ignore[union-attr]
        with shared_daemon.client() as c:
            wait_until(lambda: c.session(sid)["status"] == "paused", timeout=90, what="the budget's pause")
        said = proc.stderr.readline()  # type: ignore[union-attr]
        assert f"{sid} paused" in said and f"labd resume {sid}" in said, said
        assert proc.poll() is None  # still waiting
        assert labd("resume", sid, "--budget", "1").returncode == 0
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_check_beside_its_running_daemon_says_the_daemon_runs_on_its_old_configuration(shared_daemon) -> None:
    """`labd serve --check` in the home of a running daemon (the check of a running service's edited config.toml)
    passes, as the daemon's own lock is no other writer, and says the daemon runs now with the configuration it
    started with, and how to apply the new one; it had said only "configuration OK", which an admin took for "no
    daemon writes it"."""
    r = labd("serve", "--check")
    assert r.returncode == 0 and r.stdout.startswith("configuration OK"), r
    assert f"this home's daemon ({shared_daemon.proc.pid}) runs now, with the configuration it started with: " \
           "restart it" in r.stdout, r.stdout
