"""Payloads nested deeper than JSON encoders allow never break the event path or go unanswered."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import DaemonProc

pytestmark = pytest.mark.fault


def test_deep_emit_is_refused_in_the_workflow_and_the_session_carries_on(shared_daemon: DaemonProc) -> None:
    """ctx.emit with a payload 300 levels deep raises in the workflow (a clear error); the events after
    it are delivered and the session completes."""
    with shared_daemon.client() as c:
        sid = c.start("tests.fault.faultflows:deep_emit", params={"depth": 300})
        final = c.wait(sid, timeout=60)
        events = list(c.history(sid))
    assert final["status"] == "completed", final
    text = "".join(e["payload"]["text"] for e in events if e["kind"] == "output")
    assert "refused: value nested deeper than 255 levels" in text
    assert any(e["kind"] == "custom" and e["payload"]["name"] == "after" for e in events)


def _crafted_start(c: Any, depth: int) -> dict[str, Any]:
    """Send a validly signed session.start whose params nest ``depth`` levels (built as text: our own
    encoder refuses it) and return the reply body."""
    params = '{"a":' * depth + "1" + "}" * depth
    msg_id = "crafted" + str(depth)
    head = f'{{"v":1,"id":"{msg_id}","ts":{time.time()!r},"type":"session.start",'
    raw = (head + '"body":{"workflow":"demo.count","params":{"x":' + params + "}}}").encode()
    c._sock.send_multipart([c._codec.signer.sign(raw), raw])  # noqa: SLF001 - a hand-crafted frame
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if c._sock.poll(500):  # noqa: SLF001
            reply = c._codec.unpack(c._sock.recv_multipart())  # noqa: SLF001
            if reply.re == msg_id:
                return reply.body
    raise AssertionError(f"no reply to a session.start nested {depth} levels")


@pytest.mark.parametrize("depth", [210, 300, 2000])
def test_deep_params_get_a_structured_error_reply(shared_daemon: DaemonProc, depth: int) -> None:
    """A signed session.start with params nested 210 / 300 / 2000 levels gets a bad_request reply (no runner
    launched, no half-created session), and the daemon keeps serving."""
    with shared_daemon.client(timeout=10) as c:
        before = {s["id"] for s in c.sessions(limit=10_000)}  # the module's shared daemon: other tests' sessions
        body = _crafted_start(c, depth)
        assert body["ok"] is False and body["error"]["code"] == "bad_request", body
        assert {s["id"] for s in c.sessions(limit=10_000)} == before
        c.ping()
