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
    """Credential-looking variables (and the database URL) never reach workflow code: not in its
    environment, not in /proc/<pid>/environ of the runner or its parent, not in a child it runs."""
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
                              "db_url_visible": False}
    finally:
        d.stop()
    db = (daemon.home / "labd.db").read_bytes() + (daemon.home / "labd.db-wal").read_bytes() \
        if (daemon.home / "labd.db-wal").exists() else (daemon.home / "labd.db").read_bytes()
    assert b"sk-very-secret" not in db
    assert "sk-very-secret" not in d.log()
