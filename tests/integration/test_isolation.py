"""Isolation: concurrent sessions never see each other's globals, cwd, env, logging or output."""

from __future__ import annotations

import os
import re


def _output(client, sid: str, stream: str | None = None) -> str:
    return "".join(e["payload"]["text"] for e in client.history(sid, kinds=["output"])
                   if stream is None or e["payload"]["stream"] == stream)


def test_two_concurrent_sessions_keep_their_own_state_and_output(client) -> None:
    """Two sessions that change globals, cwd, env and logging config and print heavily (Python, fd-level
    and child-process output) each get complete output containing only their own lines."""
    lines = 3000
    a = client.start("labd_testflows:isolation", params={"tag": "AAA", "lines": lines})
    b = client.start("labd_testflows:isolation", params={"tag": "BBB", "lines": lines})
    for sid in (a, b):
        assert client.wait(sid, timeout=60)["status"] == "completed"
    for sid, mine, other in ((a, "AAA", "BBB"), (b, "BBB", "AAA")):
        out = _output(client, sid)
        assert other not in out
        py = re.findall(rf"^{mine} py (\d+)$", out, re.M)
        assert [int(i) for i in py] == list(range(lines)), "python-level output incomplete or reordered"
        assert len(re.findall(rf"^{mine} fd \d+$", out, re.M)) == lines // 100
        assert len(re.findall(rf"^{mine} child \d+ {mine}$", out, re.M)) == 200
        # logging.basicConfig in the workflow wrote to its own stderr, with its own format
        assert f"{mine} logging configured by {mine}" in _output(client, sid, "stderr")
        result = [e for e in client.history(sid) if e["kind"] == "session.finished"][0]["payload"]["result"]
        assert result["owner"] == mine and result["env"] == mine
        assert result["cwd"].endswith(f"{sid}/work/cwd-{mine}")
    # the daemon's own state was not touched
    assert "ISO_TAG" not in os.environ


def test_secrets_are_withheld_from_the_workflow_environment(daemon) -> None:
    """Credential-looking variables never reach workflow code's environment: not in its environment, not in
    /proc/<pid>/environ of the runner or its parent, not in a child it runs (the workflow reads them with
    ``ctx.secret``). The store's URL (``LABD_DB``) reaches it by no way at all: an attack review read it with
    ``ctx.secret("LABD_DB")``."""
    daemon.stop()
    from tests.conftest import DaemonProc

    d = DaemonProc(daemon.home, extra_env={"FAKE_API_KEY": "sk-very-secret",
                                           "LABD_DB": f"sqlite:///{daemon.home / 'labd.db'}"}).start()
    try:
        with d.client() as c:
            sid = c.start("labd_testflows:env_report")
            assert c.wait(sid, timeout=30)["status"] == "completed"
            result = [e for e in c.history(sid) if e["kind"] == "session.finished"][0]["payload"]["result"]
            assert result == {"has_key": False, "secret_via_ctx": True, "in_proc": False, "in_child": False,
                              "db_url_visible": False, "db_url_secret": False}
    finally:
        d.stop()
    db = (daemon.home / "labd.db").read_bytes() + (daemon.home / "labd.db-wal").read_bytes() \
        if (daemon.home / "labd.db-wal").exists() else (daemon.home / "labd.db").read_bytes()
    assert b"sk-very-secret" not in db
    assert "sk-very-secret" not in d.log()


def test_a_secret_the_workflow_prints_or_logs_is_never_recorded(daemon) -> None:
    """A workflow that prints ``ctx.secret(...)``, logs it, names a step after it, emits it in an event, returns it
    and has a child echo it: the store holds ``[secret FAKE_API_KEY withheld]`` wherever the value was, never the
    value (found by a review: it landed unredacted in 11 events). The session itself still had the value."""
    daemon.stop()
    from tests.conftest import DaemonProc

    secret = "sk-leak-Z9q8w7e6r5t4"
    d = DaemonProc(daemon.home, extra_env={"FAKE_API_KEY": secret}).start()
    try:
        with d.client() as c:
            sid = c.start("labd_testflows:leak_secret")
            assert c.wait(sid, timeout=30)["status"] == "completed"
            events = list(c.history(sid))
    finally:
        d.stop()
    text = repr(events)
    assert secret not in text
    marks = text.count("[secret FAKE_API_KEY withheld]")
    assert marks >= 8, text[-3000:]  # output x3, log, step name (started + finished), custom event x2, result
    finished = [e for e in events if e["kind"] == "session.finished"][0]["payload"]
    assert finished["result"] == "[secret FAKE_API_KEY withheld]"
    db = b"".join(p.read_bytes() for p in daemon.home.glob("labd.db*"))
    assert secret.encode() not in db


def test_a_secret_in_a_long_text_is_withheld_and_its_event_kept(daemon) -> None:
    """A program of over 5,000 characters quoting the session's API key is recorded as ``code.execution`` with the
    key withheld in its code (a blob: long texts travel under their sha256). Before, the channel replaced the key in
    the blob's text after its address was taken, the daemon refused the event as not matching its sha256, and the
    whole execution (code, exit code, output) was missing from the record."""
    daemon.stop()
    from tests.conftest import DaemonProc

    secret = "sk-leak-Z9q8w7e6r5t4"
    d = DaemonProc(daemon.home, extra_env={"FAKE_API_KEY": secret}).start()
    try:
        with d.client() as c:
            sid = c.start("labd_testflows:run_code_directly", params={"mode": "secret"})
            assert c.wait(sid, timeout=60)["status"] == "completed"
            events = list(c.history(sid, full=True))
    finally:
        d.stop()
    rejected = [e for e in events if e["kind"] == "event.rejected"]
    assert not rejected, rejected
    [run] = [e["payload"] for e in events if e["kind"] == "code.execution"]
    assert run["exit_code"] == 0 and run["output"] == "long ran\n"
    assert run["code"].startswith("x = '[secret FAKE_API_KEY withheld]'\n# ppp") and len(run["code"]) > 5000
    assert secret not in repr(events)
    db = b"".join(p.read_bytes() for p in daemon.home.glob("labd.db*"))
    assert secret.encode() not in db


def test_a_program_printing_more_than_a_message_keeps_its_execution_record(daemon) -> None:
    """A program that prints 17 MiB (more than one message holds) is recorded as ``code.execution`` with its code,
    exit code, and the start and end of its output, the bytes between them counted (``output_dropped``). Before, the
    whole event was replaced by ``event.truncated``: what the agent had run was gone from the record."""
    from labd.runner.agents.kept_output import KEPT_HEAD, KEPT_TAIL

    with daemon.client() as c:
        sid = c.start("labd_testflows:run_code_directly", params={"mode": "flood"})
        assert c.wait(sid, timeout=120)["status"] == "completed"
        events = list(c.history(sid, full=True))
    assert not [e for e in events if e["kind"] in ("event.truncated", "event.rejected")]
    [run] = [e["payload"] for e in events if e["kind"] == "code.execution"]
    assert run["exit_code"] == 0 and "sys.stdout.write('A' * (17 << 20))" in run["code"]
    printed = (17 << 20) + len("\nthe end\n")
    assert run["output_dropped"] == printed - KEPT_HEAD - KEPT_TAIL
    head, gap, tail = run["output"].partition(f"\n… [{run['output_dropped']:,} bytes of output not recorded]\n")
    assert gap and head == "A" * KEPT_HEAD and tail.endswith("A\nthe end\n") and len(tail) == KEPT_TAIL


def test_a_program_longer_than_one_argument_is_refused_to_its_agent_not_raised(daemon) -> None:
    """A 200 KiB program (Linux passes one argument of at most 128 KiB) is answered "not run" with why, as a
    program's failure the agent can act on, and recorded as ``code.execution`` (exit code 126, its code kept);
    before, the exec's ``OSError: Argument list too long`` left the tool and failed the whole session."""
    with daemon.client() as c:
        sid = c.start("labd_testflows:run_code_directly", params={"mode": "huge"})
        assert c.wait(sid, timeout=60)["status"] == "completed"
        events = list(c.history(sid, full=True))
        result = c.result(sid)
    [run] = [e["payload"] for e in events if e["kind"] == "code.execution"]
    assert run["exit_code"] == 126 and run["output"].startswith("not run: the program is 200,623 bytes") and \
        run["code"].endswith("print('huge ran')")
    assert "[exit code: 126]" in str(result)
