"""Bad input through the real `labd` CLI and SDK gets one clear line and exit status 2 (ValueError/LabdError from the
SDK), never a traceback (each found by an exploratory test): a home that cannot be a directory, config and policy
files that are not UTF-8, sizes beyond any machine, NaN and negative SDK timeouts."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labd.ipc import Client, LabdError
from labd.ipc.events import TERMINAL_STATUSES
from tests.conftest import module_home, running_daemon

pytestmark = pytest.mark.timeout(120)


def labd(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m labd ARGS`` as a user runs it, in this test's environment."""
    return subprocess.run([sys.executable, "-m", "labd", *args], capture_output=True, text=True, timeout=90,
                          env=dict(os.environ))


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    """The single `labd: ...` line of a command that failed with exit status 2 (and nothing else on stderr)."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("labd: "), r.stderr
    return lines[0]


# ---- 1. a home that cannot be a directory ----------------------------------------------------------------------

@pytest.mark.parametrize("detach", [False, True])
def test_serve_on_a_home_that_is_a_file_says_so(tmp_path: Path, detach: bool) -> None:
    """`labd --home FILE serve` and `serve --detach` exit 2 with `labd: cannot use FILE as labd's home: it is a
    file`; before: a FileExistsError traceback (from the daemon's Layout.ensure, or daemonctl's mkdir)."""
    home = tmp_path / "x"
    home.write_text("a file")
    r = labd("--home", str(home), "serve", *(["--detach"] if detach else []))
    assert one_line_error(r) == f"labd: cannot use {home} as labd's home: it is a file"
    assert home.read_text() == "a file"


@pytest.mark.parametrize("detach", [False, True])
def test_serve_on_a_home_that_cannot_be_created_gives_the_reason(detach: bool) -> None:
    """`labd --home /proc/1/bd serve [--detach]` exits 2 naming the home and the system's reason; before: a
    FileNotFoundError traceback."""
    r = labd("--home", "/proc/1/bd", "serve", *(["--detach"] if detach else []))
    assert one_line_error(r).startswith("labd: cannot use /proc/1/bd as labd's home: cannot create it: ")


def test_serve_detach_with_an_unwritable_log_says_so(isolated_env: Path) -> None:
    """`serve --detach` whose log (HOME/daemon.log) cannot be opened (a directory there) exits 2 naming the log and
    the reason, before starting anything; before: an IsADirectoryError traceback."""
    (isolated_env / "daemon.log").mkdir(parents=True)
    r = labd("serve", "--detach")
    assert one_line_error(r) == f"labd: cannot write the daemon's log {isolated_env / 'daemon.log'}: Is a directory"


# ---- 2. a config.toml that is not UTF-8 ------------------------------------------------------------------------

def test_serve_with_a_config_that_is_not_utf8_is_a_config_error(isolated_env: Path) -> None:
    """`labd serve` on a home whose config.toml is not UTF-8 exits 2 with the same `labd: cannot read PATH: ...`
    line a TOML syntax error gets, saying which byte on which line; before: a UnicodeDecodeError traceback."""
    isolated_env.mkdir(parents=True)
    cfg = isolated_env / "config.toml"
    cfg.write_bytes(b"[daemon\n")
    assert one_line_error(labd("serve")).startswith(f"labd: cannot read {cfg}: Expected ']'")
    cfg.write_bytes(b"\xff\xfe\n")
    assert one_line_error(labd("serve")) == \
        f"labd: cannot read {cfg}: not UTF-8 text: byte 0xff on line 1 (TOML files are UTF-8)"


# ---- 3. a policy file that is not UTF-8 ------------------------------------------------------------------------

def test_policy_check_with_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    """`labd policy check FILE --action code` (no daemon needed) exits 2 with `labd: FILE: not valid TOML: ...`, as for
    a syntax error; before: a UnicodeDecodeError traceback."""
    syntax, bad = tmp_path / "syntax.toml", tmp_path / "bad.toml"
    syntax.write_bytes(b"[[policy\n")
    bad.write_bytes(b"\xff\xfe\n")
    assert one_line_error(labd("policy", "check", str(syntax), "--action", "code")).startswith(
        f"labd: {syntax}: not valid TOML: Expected")
    assert one_line_error(labd("policy", "check", str(bad), "--action", "code")) == \
        f"labd: {bad}: not valid TOML: not UTF-8 text: byte 0xff on line 1 (TOML files are UTF-8)"


# ---- with a daemon ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared() -> Iterator[dict[str, Any]]:
    """One daemon for the tests below (each starts its own sessions, or none)."""
    with module_home("lbad") as (base, env), running_daemon(base / "home") as d:
        yield {"daemon": d, "env": env}


@pytest.fixture
def client(shared: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    for k, v in shared["env"].items():  # over the per-test isolated_env: the CLI and SDK talk to the module's daemon
        monkeypatch.setenv(k, v)
    with shared["daemon"].client() as c:
        yield c


def test_run_with_a_policy_file_that_is_not_utf8(client: Client, tmp_path: Path) -> None:
    """`labd run demo.count --policy FILE` with a non-UTF-8 FILE exits 2 with the policy-file line and starts nothing;
    before: a UnicodeDecodeError traceback."""
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe\n")
    before = len(client.sessions())
    assert one_line_error(labd("run", "demo.count", "--policy", str(bad))) == \
        f"labd: {bad}: not valid TOML: not UTF-8 text: byte 0xff on line 1 (TOML files are UTF-8)"
    assert len(client.sessions()) == before


@pytest.mark.parametrize("flags", [["--memory", "1e99M"], ["--memory", "99999999999999999999999G"],
                                   ["--memory", "1e300T"], ["--max-output", "999999999999999T"]])
def test_run_with_a_size_beyond_any_machine(client: Client, flags: list[str]) -> None:
    """`labd run demo.sleep --memory 1e99M` (and sizes of 2**64 bytes and more, or too large to compute) exits 2
    saying the size is beyond any machine, and starts nothing; before: the daemon answered `has no unit` (`add a
    unit` for --max-output) although a unit was given, and 1e300T was an OverflowError traceback."""
    before = len(client.sessions())
    line = one_line_error(labd("run", "demo.sleep", *flags))
    assert f"bad size '{flags[1]}': beyond any machine" in line, line
    assert len(client.sessions()) == before


@pytest.mark.parametrize("field", ["memory", "max_output"])
def test_sdk_start_with_a_size_too_large_for_json(client: Client, field: str) -> None:
    """Client.start(memory=2**70) is refused before it is sent (`bad_request` naming the field: JSON integers end at
    64 bits); likewise max_output=2**70. Before: sent as its digits, `has no unit` / `add a unit`, later `bad_limits`
    (beyond any machine); a client that sends such a number as JSON still gets that from the daemon."""
    too_large: dict[str, Any] = {field: 2**70}
    before = len(client.sessions())
    with pytest.raises(LabdError) as err:
        client.start("demo.sleep", **too_large)
    assert err.value.code == "bad_request" and "past 64 bits" in err.value.message, err.value.message
    assert err.value.details["field"].startswith("limits.") and str(2**70) in err.value.message
    assert len(client.sessions()) == before


@pytest.mark.timeout(60)  # before the fix, wait(timeout=nan) never returned
def test_sdk_wait_follow_result_refuse_nan_and_negative_timeouts(client: Client) -> None:
    """On a running session, wait/follow/result with timeout NaN or -1 raise ValueError at once (before: NaN waited
    forever, -1 raised `did not end within -1s`); a small timeout still times out (LabdError `timeout`), and
    inf means no limit, as None does."""
    sid = client.start("demo.sleep", params={"seconds": 300})
    try:
        for timeout in (math.nan, -1):
            with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
                client.wait(sid, timeout=timeout)
            with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
                client.follow(sid, timeout=timeout)
            with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
                client.result(sid, timeout=timeout)
        with pytest.raises(LabdError) as err:
            client.wait(sid, timeout=0.3)
        assert err.value.code == "timeout"
        client.stop(sid)
        assert client.wait(sid, timeout=math.inf)["status"] == "cancelled"
    finally:
        if client.session(sid)["status"] not in TERMINAL_STATUSES:
            client.kill(sid)


def test_agents_lists_a_role_whose_system_prompt_is_empty(client: Client, shared: dict[str, Any]) -> None:
    """`labd agents` lists a role whose system prompt is empty or only blank lines (a registry file `system_prompt =
    ""`, or an empty system_prompt_file) with an empty description cell; before: an IndexError traceback, and no
    role listed at all."""
    agents = shared["daemon"].home / "agents"
    agents.mkdir(exist_ok=True)
    (agents / "blank.toml").write_text('system_prompt = ""\n')
    (agents / "blanklines.toml").write_text('system_prompt = "\\n  \\n"\n')
    try:
        r = labd("agents")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:] if line.strip()}
        assert {"blank", "blanklines", "engineer"} <= set(rows)
    finally:
        (agents / "blank.toml").unlink()
        (agents / "blanklines.toml").unlink()


def test_replay_report_of_a_divergence_whose_input_is_blank() -> None:
    """`labd replay --wait` reporting a first divergence (`replay.miss`) whose asked or recorded input is only
    whitespace prints the report with an empty `asked:` / `recorded:` line; before: an IndexError traceback after the
    replay had run."""
    import io
    from types import SimpleNamespace

    from labd.frontends.cli.lineage import _first_divergence
    from labd.frontends.cli.output import Output

    out = io.StringIO()
    ctx = SimpleNamespace(out=Output(stdout=out, stderr=io.StringIO()))
    _first_divergence(ctx, {"kind": "replay.miss", "node_id": "n3", "payload": {  # type: ignore[arg-type]
        "what": "llm", "digest": "ab" * 32, "input": " \n\t",
        "expected": {"what": "llm", "node": "n3", "input": "\n\n", "digest": "cd" * 32}}})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("first divergence: node n3 made a llm request")
    assert [line.rstrip() for line in lines[1:]] == ["  asked:", "  recorded:"]


def test_dag_of_steps_nested_deeper_than_the_recursion_limit(client: Client) -> None:
    """`labd dag SESSION` draws a session whose steps are nested 1,100 deep (past Python's recursion limit), one line
    per step; before: a RecursionError traceback."""
    sid = client.start("labd_testflows:deep")
    assert client.wait(sid, timeout=90)["status"] == "completed"
    r = labd("dag", sid)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert len(lines) == 1100 and lines[-1].strip().startswith("└── n1100 s1099 · completed")
