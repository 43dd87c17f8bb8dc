"""What a runner holds of the daemon: no descriptor to the daemon's log (its stderr), and a crash channel of its own.

A runner used to inherit the daemon's stderr (``labd serve --detach`` points it at ``daemon.log``) through the
template, and kept a copy as its crash channel. Landlock checks only at open, so session code could find that
descriptor and write forged lines into the daemon's own log, past any output cap. Now the runner's crash channel is
``<home>/sessions/<id>/runner.stderr`` (runner/session.py, ``own_crash_channel``), and the daemon records its end in
``session.ended`` (``runner_stderr``) when the runner crashes (daemon/supervisor.py).

The daemon here is a real ``labd serve`` whose stdout and stderr go to ``DaemonProc.log_path``: that file is "the
daemon's log" these tests look for.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from tests.conftest import DaemonProc, wait_until

FLOWS = textwrap.dedent('''
    import json
    import os

    FORGED = {"session_id": "ffffffffffffffffffffffffffffffff", "event": "FORGED", "level": "error"}


    def fdspy(ctx, daemon_log: str = ""):
        """Every descriptor of this process and what it points at; a forged line written to each one that leads to
        the daemon's log (or to whatever the daemon's stderr is, given as ``daemon_log``)."""
        fds, wrote = {}, []
        for name in os.listdir("/proc/self/fd"):
            try:
                fds[name] = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                continue
        for name, target in fds.items():
            if target == daemon_log or target.endswith("daemon.log"):
                try:
                    os.write(int(name), (json.dumps(FORGED) + "\\n").encode())
                    wrote.append(name)
                except OSError:
                    pass
        return {"fds": fds, "wrote": wrote, "pid": os.getpid()}


    def crash(ctx):
        """A real fault of the runner process, outside any Python error handling."""
        import faulthandler

        faulthandler._sigsegv()
''')

TERMINAL = ("completed", "failed", "cancelled", "lost")


def _ended(c: Any, sid: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(lambda: (lambda s: s if s["status"] in TERMINAL else None)(c.session(sid)),
                      timeout=timeout, interval=0.05, what=f"session {sid} ended")


def _finished(c: Any, sid: str) -> dict[str, Any]:
    return next(e["payload"] for e in c.history(sid) if e["kind"] == "session.finished")


def _ended_event(c: Any, sid: str) -> dict[str, Any]:
    return next(e["payload"] for e in c.history(sid) if e["kind"] == "session.ended")


def test_no_runner_descriptor_leads_to_the_daemons_log(daemon: DaemonProc, tmp_path: Path) -> None:
    """Two sessions (the first usually handed to the warm spare, the next forked or another spare) list their
    own descriptors: none points at the daemon's log, no forged line could be written there, and the daemon's log
    holds no forged line. The runner's crash channel is the session's own ``runner.stderr`` (mode 0600)."""
    (tmp_path / "fdflows.py").write_text(FLOWS)
    log = str(daemon.log_path)
    c = daemon.client()
    try:
        for _ in range(2):
            sid = c.start("./fdflows.py:fdspy", params={"daemon_log": log}, cwd=str(tmp_path))
            s = _ended(c, sid)
            assert s["status"] == "completed", s
            result = _finished(c, sid)["result"]
            targets = result["fds"].values()
            assert result["wrote"] == [], result
            assert not [t for t in targets if t == log or t.endswith("daemon.log")], result
            crash_file = daemon.home / "sessions" / sid / "runner.stderr"
            assert str(crash_file) in targets, result
            assert crash_file.stat().st_mode & 0o777 == 0o600
            # the rest: the session's own files, pipes, sockets, /dev/null, anonymous inodes; nothing else of labd's
            home = str(daemon.home)
            own = str(daemon.home / "sessions" / sid)
            # (an unnamed spool a spare prepared in the sessions directory reads "<sessions>/#<inode> (deleted)"
            # even once linked as this session's events.spool)
            assert not [t for t in targets if t.startswith(home) and not t.startswith(own)
                        and not t.startswith(f"{home}/sessions/#")], result
    finally:
        c.close()
    assert "FORGED" not in daemon.log_path.read_text(errors="replace")


def test_a_runner_crash_is_recorded_in_the_session_not_in_the_daemons_log(daemon: DaemonProc, tmp_path: Path) -> None:
    """Session code segfaults the runner (faulthandler._sigsegv: a real SIGSEGV, outside the workflow's error
    handling). The fault's text (Python's fatal error report, with the workflow's frame) is recorded in the
    session's ``session.ended`` (``runner_stderr``), its reason and its ``runner.stderr``; the daemon's log holds
    none of it."""
    (tmp_path / "fdflows.py").write_text(FLOWS)
    c = daemon.client()
    try:
        sid = c.start("./fdflows.py:crash", cwd=str(tmp_path))
        s = _ended(c, sid)
        assert s["status"] == "failed" and "SIGSEGV" in (s["reason"] or ""), s
        assert "Fatal Python error: Segmentation fault" in s["reason"], s  # `labd show` says why, not only how
        ended = _ended_event(c, sid)
    finally:
        c.close()
    text = ended.get("runner_stderr") or ""
    assert "Fatal Python error: Segmentation fault" in text, ended
    assert "in crash" in text, ended  # the workflow's frame: where the fault happened
    assert len(text) <= 2000
    assert "Fatal Python error" in (daemon.home / "sessions" / sid / "runner.stderr").read_text()
    assert "Fatal Python error" not in daemon.log_path.read_text(errors="replace")
