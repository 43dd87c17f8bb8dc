"""The dashboard's JSON API and the fields of a request body: one it does not take is a 400 naming it, never
ignored; an optional field of the wrong type is a 400 too, not read as absent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.integration.test_ui_robust import running_ui

pytestmark = pytest.mark.timeout(180)


def test_a_field_the_api_does_not_take_is_a_400_naming_it(shared_daemon, tmp_path: Path) -> None:
    """POST /api/sessions with ``memroy`` (a misspelt ``memory``) is a 400 naming ``memroy`` and starts nothing: it
    was ignored, and the session ran with no memory limit. A resolve with ``feeback`` is refused the same way and the
    approval stays pending (it was answered without the feedback). ``name: 0`` or ``params: 0`` is a 400 (it was read
    as no name, no parameters). A right body still starts a session with its limit and answers the approval."""
    with shared_daemon.client() as c, running_ui(shared_daemon.home, tmp_path / "ui-stderr.log") as ui:
        def post(path: str, body: Any) -> tuple[int, dict[str, Any]]:
            status, raw = ui.request(path, json.dumps(body).encode())
            return status, json.loads(raw)

        before = {s["id"] for s in c.sessions(limit=1000)}
        for body, named in [({"workflow": "demo.count", "params": {"n": 1}, "memroy": "256M"}, "'memroy'"),
                            ({"workflow": "demo.count", "procs": 5, "max_output": "1M"}, "'max_output', 'procs'"),
                            ({"workflow": "demo.count", "name": 0}, "field 'name' must be a string"),
                            ({"workflow": "demo.count", "params": 0}, "field 'params' must be an object")]:
            status, got = post("/api/sessions", body)
            assert status == 400 and got["error"]["code"] == "bad_request", (body, got)
            assert named in got["error"]["message"], (body, got)
        assert {s["id"] for s in c.sessions(limit=1000)} == before  # nothing was started

        status, got = post("/api/sessions", {"workflow": "labd_testflows:custom_approval", "memory": "256M"})
        assert status == 200, got
        sid = got["session"]
        assert c.session(sid)["limits"]["memory"] == 256 * 1024 * 1024
        pending = wait_until(lambda: c.approvals(session=sid), timeout=60, what="the approval asked for")
        status, got = post("/api/approvals/resolve", {"session": sid, "approval_id": pending[0]["id"],
                                                      "decision": "red", "feeback": "why red"})
        assert status == 400 and "'feeback'" in got["error"]["message"], got
        assert c.approvals(session=sid)[0]["status"] == "pending"
        status, got = post("/api/approvals/resolve", {"session": sid, "approval_id": pending[0]["id"],
                                                      "decision": "red", "feedback": "why red"})
        assert status == 200, got
        assert c.wait(sid, timeout=60)["status"] == "completed"


def test_a_misspelt_filter_of_a_list_path_is_a_400_naming_it(shared_daemon, tmp_path: Path) -> None:
    """``/api/sessions?stauts=running``, ``/api/approvals?statuss=all``, ``/api/sessions/ID/events?nod=n1`` and
    ``/api/sessions/ID/dag?newst=5`` are 400s naming the parameter (a ``newest`` of 0 too): each was ignored, and
    the answer was every session, the pending approvals, every event, the whole graph, as if it had been
    filtered. The parameters these paths take still filter."""
    with shared_daemon.client() as c, running_ui(shared_daemon.home, tmp_path / "ui-stderr.log") as ui:
        sid = c.start("demo.count", params={"n": 2, "delay": 0})
        assert c.wait(sid, timeout=60)["status"] == "completed"
        for path, named in [("/api/sessions?stauts=running", "'stauts'"), ("/api/approvals?statuss=all", "'statuss'"),
                            (f"/api/sessions/{sid}/events?nod=n1", "'nod'"),
                            (f"/api/sessions/{sid}/dag?newst=5", "'newst'"),
                            (f"/api/sessions/{sid}/dag?newest=0", "newest")]:
            status, raw = ui.request(path)
            got = json.loads(raw)
            assert status == 400 and got["error"]["code"] == "bad_request", (path, got)
            assert named in got["error"]["message"], (path, got)
        status, raw = ui.request("/api/sessions?status=running&limit=5")
        assert status == 200 and sid not in {s["id"] for s in json.loads(raw)}
        status, raw = ui.request(f"/api/sessions/{sid}/events?since=0&node=n1")
        assert status == 200, raw
        status, raw = ui.request(f"/api/sessions/{sid}/dag?newest=1")  # the newest of its two nodes
        dag = json.loads(raw)
        assert status == 200 and len(dag["dag"]["nodes"]) == 1 and dag["nodes_omitted"] >= 1, raw
