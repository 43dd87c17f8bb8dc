"""The warm spare runner (runner/spare.py): the template keeps one pre-forked runner that takes the next
session's spec; it is used once, holds nothing of any session while it waits, dies with its template, and
can be turned off ([daemon] spare_runners = 0). See docs/design.md, "Start latency"."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from labd.daemon.config import ConfigError, load_config
from labd.ipc import Client
from tests.conftest import alive, module_home, running_daemon, wait_until

SECRET = "sk-spare-test-0123456789"
SPARE_TITLE = "labd: spare runner"


@pytest.fixture(scope="module")
def shared() -> Iterator[dict[str, Any]]:
    """One daemon (spare on, the default) for the module, with a secret in its environment."""
    with (module_home("lspr") as (base, env),
          running_daemon(base / "home", extra_env={"OPENAI_API_KEY": SECRET}) as d):
        yield {"daemon": d, "env": env}


@pytest.fixture
def client(shared: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    for k, v in shared["env"].items():  # over the per-test isolated_env: talk to the module's daemon
        monkeypatch.setenv(k, v)
    with shared["daemon"].client() as c:
        yield c


def spares(template_pid: int, ready: bool = True) -> list[psutil.Process]:
    """The template's children that are (still) spare runners, by their process title (``ready``: warmed
    up; a spare still warming up is not handed a spec: the launch forks instead)."""
    out = []
    for p in psutil.Process(template_pid).children():
        try:
            title = p.cmdline()[0].strip() if p.cmdline() else ""
            if p.status() != psutil.STATUS_ZOMBIE and (title == SPARE_TITLE or
                                                        (not ready and title.startswith(SPARE_TITLE))):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def the_spare(c: Client) -> psutil.Process:
    template = c.status()["template_pid"]
    return wait_until(lambda: (s := spares(template)) and s[0], timeout=30, what="a spare runner")


def test_a_session_runs_in_the_spare_and_a_new_spare_takes_its_place(client: Client) -> None:
    """The waiting spare becomes the next session's runner (same pid), in its own process group, under the
    session's limits; a fresh spare (another pid) is forked after it."""
    spare = the_spare(client)
    # a 10 s wall-time limit: ended by it, but not before the checks of its process below (2 s was, on a slow box)
    sid = client.start("demo.sleep", params={"seconds": 60}, timeout=10.0)
    run = wait_until(lambda: (s := client.session(sid)).get("pid") and s, timeout=30, what="runner pid")
    assert run["pid"] == spare.pid
    template = client.status()["template_pid"]
    # its own process group; the template's session (one scheduling group for all runners)
    assert os.getpgid(spare.pid) == spare.pid and os.getsid(spare.pid) == os.getsid(template) != spare.pid
    wait_until(lambda: not psutil.Process(spare.pid).cmdline()[0].startswith(SPARE_TITLE), timeout=30,
               what="the runner's title for its session")
    final = client.wait(sid, timeout=60)  # the daemon's wall-time limit applies to it as to any runner
    assert final["status"] == "failed" and final["reason"].startswith("stopped: wall time")
    nxt = the_spare(client)
    assert nxt.pid != spare.pid


def test_a_spare_is_never_reused_and_quick_starts_fall_back_to_a_fork(client: Client) -> None:
    """Sessions started back to back (faster than a new spare is made) each get their own process: the
    first may take the spare, the others are forked; all complete, no pid twice."""
    sids = [client.start("demo.count", params={"n": 1, "delay": 0}) for _ in range(5)]
    finals = [client.wait(s, timeout=60) for s in sids]
    assert [f["status"] for f in finals] == ["completed"] * 5
    pids = [client.session(s)["pid"] for s in sids]
    assert len(set(pids)) == 5, pids


def test_a_waiting_spare_holds_no_secret_no_socket_and_no_thread(client: Client) -> None:
    """While it waits, the spare's environment has no secret (they come in a spec), it has no socket
    and no thread (Landlock, applied once the spec is in, would not confine an earlier thread), and no
    other process holds its spec pipe."""
    spare = the_spare(client)
    wait_until(lambda: len(os.listdir(f"/proc/{spare.pid}/task")) == 1, timeout=30, what="warm-up done")
    environ = Path(f"/proc/{spare.pid}/environ").read_bytes()
    assert SECRET.encode() not in environ and b"OPENAI_API_KEY" not in environ
    links = [os.readlink(f"/proc/{spare.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{spare.pid}/fd")]
    assert not [link for link in links if link.startswith("socket:")], links
    # its pipes (the spec pipe's read end, the prepared output pipes) are its own; the one other holder
    # allowed is the template, which holds the spec pipe's write end (no runner or other child does)
    pipes = {link for link in links if link.startswith("pipe:")}
    assert pipes
    template = client.status()["template_pid"]
    holders = set()
    for p in psutil.process_iter():
        if p.pid == spare.pid:
            continue
        try:
            fds = os.listdir(f"/proc/{p.pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{p.pid}/fd/{fd}") in pipes:
                    holders.add(p.pid)
            except OSError:
                continue
    assert holders == {template}, holders


def test_runner_events_never_race_ahead_of_session_created(client: Client) -> None:
    """With runners up within milliseconds, no runner frame arrives before its session exists in ingest:
    nothing is dropped as unknown_session, and every session's first event is session.created."""
    sids = [client.start("demo.count", params={"n": 1, "delay": 0}) for _ in range(8)]
    for s in sids:
        assert client.wait(s, timeout=60)["status"] == "completed"
        first = client.events(s, limit=1)["events"][0]
        assert first["kind"] == "session.created" and first["seq"] == 1
    assert not client.status()["counters"].get("dropped.runner.unknown_session")


def test_the_spare_prepares_its_sessions_spool_unnamed(client: Client, shared: dict[str, Any]) -> None:
    """Once it knows where session directories are (from the previous spec), a waiting spare holds its next
    session's event spool as an unnamed file in the sessions directory: no name appears there while it waits,
    the session that takes it records every event through it (named events.spool in its own directory, removed
    once all was acknowledged), and a spare killed unused leaves no file behind."""
    sessions = (shared["daemon"].home / "sessions").resolve()
    warm = client.start("demo.count", params={"n": 1, "delay": 0})  # a spec: the next spares know the directory
    assert client.wait(warm, timeout=60)["status"] == "completed"

    def unnamed_spool(p: psutil.Process) -> list[str]:
        links = [os.readlink(f"/proc/{p.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{p.pid}/fd")]
        return [link for link in links if link.startswith(f"{sessions}/#") and link.endswith("(deleted)")]

    spare = wait_until(lambda: (s := the_spare(client)) and unnamed_spool(s) and s, timeout=30,
                       what="a spare holding a prepared spool")
    assert [e.name for e in sessions.iterdir() if not e.is_dir()] == []
    sid = client.start("demo.count", params={"n": 3, "delay": 0})
    assert client.wait(sid, timeout=60)["status"] == "completed"
    assert client.session(sid)["pid"] == spare.pid
    kinds = [e["kind"] for e in client.events(sid, limit=100)["events"]]
    assert kinds.count("output") >= 1 and "session.started" in kinds and "session.finished" in kinds
    assert not (sessions / sid / "events.spool").exists()  # everything acknowledged: removed
    nxt = wait_until(lambda: (s := the_spare(client)) and s.pid != spare.pid and unnamed_spool(s) and s,
                     timeout=30, what="the next spare with its spool")
    os.kill(nxt.pid, signal.SIGKILL)
    wait_until(lambda: not alive(nxt.pid), timeout=30, what="its end")
    assert [e.name for e in sessions.iterdir() if not e.is_dir()] == []


def test_a_spare_dies_with_its_template(client: Client) -> None:
    """kill -9 of the template: its unused spare exits too (end of file on its spec pipe), and the new
    template makes a new spare that runs the next session."""
    spare = the_spare(client)
    old = client.status()["template_pid"]
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: not alive(spare.pid), timeout=30,
               what="the spare's exit")
    wait_until(lambda: client.status()["template_pid"] not in (None, old), timeout=30, what="new template")
    nxt = the_spare(client)
    sid = client.start("demo.count", params={"n": 1, "delay": 0})
    assert client.wait(sid, timeout=60)["status"] == "completed"
    assert client.session(sid)["pid"] == nxt.pid


def test_spares_can_be_turned_off(tmp_path: Path) -> None:
    """[daemon] spare_runners = 0: the template keeps no spare and sessions are forked on request;
    a value other than 0 or 1 is refused."""
    home = Path(os.environ["LABD_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[daemon]\nspare_runners = 0\n")
    with running_daemon(home) as d, d.client() as c:
        template = c.status()["template_pid"]
        sid = c.start("demo.count", params={"n": 1, "delay": 0})
        assert c.wait(sid, timeout=60)["status"] == "completed"
        assert spares(template, ready=False) == []
    (tmp_path / "h2").mkdir()
    (tmp_path / "h2" / "config.toml").write_text("[daemon]\nspare_runners = 2\n")
    with pytest.raises(ConfigError, match="spare_runners"):
        load_config(tmp_path / "h2")


def test_a_spare_exits_when_the_daemon_stops(tmp_path: Path) -> None:
    """Stopping the daemon ends the template, and with it the unused spare (runners with sessions live on)."""
    home = Path(os.environ["LABD_HOME"])
    with running_daemon(home) as d, d.client() as c:
        spare = the_spare(c)
    wait_until(lambda: not alive(spare.pid), timeout=30,
               what="the spare's exit")


def test_a_sessions_record_has_it_created_before_its_runner_started(client: Client) -> None:
    """``session.created`` carries the time the daemon created the session, not the time ingest wrote it: while
    ingest is busy with another session's events, a runner taken from the spare starts within milliseconds, and its
    ``session.started`` was stamped before the daemon's ``session.created`` (the record read as if the runner had
    started first)."""
    busy = client.start("demo.events", params={"n": 3_000_000})
    try:
        wait_until(lambda: client.session(busy)["last_seq"] > 10_000, timeout=60, what="ingest busy")
        for _ in range(8):
            sid = client.start("demo.count", params={"n": 1, "delay": 0.0})
            assert client.wait(sid, timeout=60)["status"] == "completed"
            ts = {e["kind"]: e["ts"] for e in client.history(sid, kinds=["session.created", "session.started"])}
            assert ts["session.created"] <= ts["session.started"], ts
    finally:
        client.stop(busy, grace=1)
        client.wait(busy, timeout=60)
