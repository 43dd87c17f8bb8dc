"""`labd mcp`: the MCP server, driven by the official SDK's client against a real daemon — in process for
the tool surface, and over real stdio (`python -m labd mcp`) as a desktop agent would start it; then line by line
over raw stdio, as a buggy or hostile client would write (too deep, too large, not JSON)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from typing import Any

import anyio
import pytest
from mcp import Client as McpClient
from mcp.client.stdio import StdioServerParameters

from labd.frontends.mcp import build_server
from labd.ipc import LabdError
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(180)


def _data(result: Any) -> Any:
    """A tool result's structured content (the SDK wraps non-object returns in {"result": ...})."""
    assert not result.is_error, result.content
    data = result.structured_content
    if isinstance(data, dict) and set(data) == {"result"}:
        return data["result"]
    return data


def _call(server: Any, name: str, **args: Any) -> Any:
    async def go() -> Any:
        async with McpClient(server) as c:
            return await c.call_tool(name, args)
    return anyio.run(go)


def test_tools_list_start_follow_and_inspect_a_session(shared_daemon) -> None:
    """An agent lists workflows, starts a session (the id comes back at once), polls its output to the end,
    and reads its state, events and DAG (whole, or its newest nodes) through tools."""
    server = build_server(shared_daemon.home)

    async def go() -> dict[str, Any]:
        async with McpClient(server) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            assert {"list_workflows", "start_session", "read_output", "answer_approval", "stop_session",
                    "get_dag", "get_cost", "list_sessions", "pause_session", "resume_session"} <= tools
            names = {w["name"] for w in _data(await c.call_tool("list_workflows", {}))}
            assert {"demo.count", "planning_and_control", "hitl"} <= names
            started = _data(await c.call_tool("start_session", {"workflow": "demo.count", "params": {"n": 3},
                                                                "memory": "256M"}))
            sid = started["session"]
            text, since, offset = "", 0, 0
            with anyio.fail_after(60):
                while True:
                    out = _data(await c.call_tool("read_output", {"session": sid, "since": since, "offset": offset}))
                    text += out["text"]
                    since, offset = out["next_since"], out["next_offset"]
                    if out["status"] in ("completed", "failed") and not out["more"]:
                        break
                    await anyio.sleep(0.1)
            session = _data(await c.call_tool("get_session", {"session": sid}))
            events = _data(await c.call_tool("read_events", {"session": sid, "kinds": ["session.ended"]}))
            listed = _data(await c.call_tool("list_sessions", {}))
            dag = _data(await c.call_tool("get_dag", {"session": sid}))
            newest = _data(await c.call_tool("get_dag", {"session": sid, "newest": 1}))
            return {"sid": sid, "text": text, "session": session, "events": events, "listed": listed, "dag": dag,
                    "newest": newest}

    r = anyio.run(go)
    assert r["session"]["status"] == "completed"
    assert [line for line in r["text"].splitlines() if line.startswith("count")] or r["text"].count("\n") >= 3
    assert r["events"]["events"][0]["payload"]["status"] == "completed"
    assert any(s["id"] == r["sid"] for s in r["listed"]["sessions"])
    nodes = r["dag"]["dag"]["nodes"]  # 3 steps: all of them (the default is the newest 500)
    assert len(nodes) == 3 and "nodes_omitted" not in r["dag"]
    assert r["newest"]["dag"]["nodes"] == nodes[-1:] and r["newest"]["nodes_omitted"] == 2


def test_errors_are_tool_errors_with_labd_codes(shared_daemon) -> None:
    """A bad workflow or an unknown session is an MCP tool error that names labd's stable code; the server
    keeps serving."""
    server = build_server(shared_daemon.home, workflows=["*"])  # any workflow may be asked for: the daemon refuses

    async def go() -> tuple[Any, Any, Any]:
        async with McpClient(server) as c:
            bad = await c.call_tool("start_session", {"workflow": "no.such:flow"})
            missing = await c.call_tool("get_session", {"session": "doesnotexist"})
            ok = await c.call_tool("list_workflows", {})
            return bad, missing, ok

    bad, missing, ok = anyio.run(go)
    assert bad.is_error
    assert "[unknown_workflow]" in bad.content[0].text or "[workflow_import_failed]" in bad.content[0].text
    assert missing.is_error and "[not_found]" in missing.content[0].text
    assert not ok.is_error


def test_list_sessions_says_when_more_match_and_pages_to_the_oldest(shared_daemon) -> None:
    """`list_sessions` says whether more sessions match than its list holds (`more`) and where the older ones start
    (`next`, given back as `before`): paging with limit=2 lists every session the daemon has, newest first, each
    once, and the last page says no more. Before, a model got the newest `limit` sessions and no sign that the list
    was cut. A `before` that is no cursor is a tool error naming it."""
    with shared_daemon.client() as c:
        for _ in range(3):  # at least five sessions, whatever the module's other tests left
            c.wait(c.start("demo.count", params={"n": 1, "delay": 0}), timeout=60)
        every = [s["id"] for s in c.iter_sessions()]
    server = build_server(shared_daemon.home)

    async def go() -> tuple[list[dict[str, Any]], Any]:
        pages, before = [], None
        async with McpClient(server) as m:
            while True:
                page = _data(await m.call_tool("list_sessions", {"limit": 2, **({"before": before} if before else {})}))
                pages.append(page)
                if not page["more"]:
                    break
                before = page["next"]
            bad = await m.call_tool("list_sessions", {"before": "not a cursor"})
        return pages, bad

    pages, bad = anyio.run(go)
    assert len(every) >= 3 and len(pages) == -(-len(every) // 2)
    assert [s["id"] for p in pages for s in p["sessions"]] == every
    assert all(p["more"] and p["next"] for p in pages[:-1]) and pages[-1]["next"] is None
    assert bad.is_error and "before" in bad.content[0].text


def test_an_approval_answered_through_mcp_resolves_the_session(shared_daemon) -> None:
    """A hitl session waits for approval; list_approvals shows it; answer_approval (approve) lets it go on,
    recorded as resolved by `mcp`."""
    server = build_server(shared_daemon.home)
    with shared_daemon.client() as lc:
        sid = lc.start("hitl", params={"task": "Sum the squares of 1..4"})
        wait_until(lambda: lc.approvals(session=sid), timeout=60, what="approval requested")
    pending = _call(server, "list_approvals", session=sid)
    assert _data(pending)[0]["session_id"] == sid
    _data(_call(server, "answer_approval", session=sid, decision="approve"))
    with shared_daemon.client() as lc:
        resolved = lc.approvals(session=sid, status="all")
        assert resolved[0]["status"] == "resolved" and resolved[0]["resolved_by"] == "mcp"
        # approve every later checkpoint too, so the session can finish
        for _ in range(20):
            s = lc.session(sid)
            if s["status"] in ("completed", "failed"):
                break
            if lc.approvals(session=sid):
                lc.approve(sid)
            else:
                wait_until(lambda: lc.approvals(session=sid) or lc.session(sid)["status"] in
                           ("completed", "failed"), timeout=60, what="next approval or end")
        assert lc.session(sid)["status"] == "completed"


def test_an_approval_a_policy_requires_of_a_human_is_refused_through_mcp(shared_daemon) -> None:
    """A `require_approval` rule on code: the MCP client (itself a model) may list the approval but answering it is
    refused with `human_required` and the code does not run; a human answers it the usual way. Started with
    `allow_policy_approvals` (labd mcp --allow-policy-approvals) the same answer goes through. Read-only tools are
    annotated read-only, answer_approval and stop_session destructive."""
    rule = [{"name": "code-needs-human", "action": "code", "agent": "engineer", "effect": "require_approval"}]
    task = {"task": "Step 1 of 1: sum squares"}
    strict, relaxed = build_server(shared_daemon.home), build_server(shared_daemon.home, allow_policy_approvals=True)
    with shared_daemon.client() as lc:
        first = lc.start("one_shot", params=task, policy=rule)
        second = lc.start("one_shot", params=task, policy=rule)
        for sid in (first, second):
            wait_until(lambda sid=sid: lc.approvals(session=sid), timeout=60, what="policy approval requested")
    assert _data(_call(strict, "list_approvals", session=first))[0]["kind"] == "policy"
    refused = _call(strict, "answer_approval", session=first, decision="approve")
    assert refused.is_error and "[human_required]" in refused.content[0].text
    assert "code-needs-human" in refused.content[0].text
    _data(_call(relaxed, "answer_approval", session=second, decision="approve"))
    with shared_daemon.client() as lc:  # what holds is the daemon's check, made on the approval it answers
        for aid in (None, lc.approvals(session=first)[0]["id"]):
            with pytest.raises(LabdError) as err:
                lc.resolve(first, "approve", approval_id=aid, by="mcp", refuse_kinds=["policy"])
            assert err.value.code == "human_required"
        assert [a["status"] for a in lc.approvals(session=first, status="all")] == ["pending"]
        assert not list(lc.history(first, kinds=["code.execution"]))
        lc.approve(first)  # a human's answer
        for sid in (first, second):
            assert lc.wait(sid, timeout=90)["status"] == "completed"
            (ap,) = lc.approvals(session=sid, status="all")
            assert ap["resolved_by"] == ("mcp" if sid == second else ap["resolved_by"]) and ap["status"] == "resolved"
        assert lc.approvals(session=first, status="all")[0]["resolved_by"] != "mcp"

    async def tools() -> dict[str, Any]:
        async with McpClient(strict) as c:
            return {t.name: t.annotations for t in (await c.list_tools()).tools}
    ann = anyio.run(tools)
    assert ann["get_session"].read_only_hint and ann["read_output"].read_only_hint
    assert ann["answer_approval"].destructive_hint and ann["stop_session"].destructive_hint
    assert not ann["answer_approval"].read_only_hint


def test_answering_before_the_policy_approval_exists_cannot_answer_it(shared_daemon) -> None:
    """An MCP client that calls answer_approval again and again from the session's start (an exploratory test's
    attack): each call finds no approval (``not_pending``) or is refused ``human_required``, never answers the policy
    approval that appears meanwhile. Before, the tool checked the pending approvals and then answered "the pending
    one" in a second request, and a policy approval asked for in between was answered in 5 of 9 runs."""
    rule = [{"name": "code-needs-human", "action": "code", "agent": "engineer", "effect": "require_approval"}]
    strict = build_server(shared_daemon.home)
    with shared_daemon.client() as lc:
        sid = lc.start("one_shot", params={"task": "Step 1 of 1: sum squares"}, policy=rule)
        answers: list[str] = []
        while not answers or "[not_pending]" in answers[-1]:  # until the approval exists and is answered
            result = _call(strict, "answer_approval", session=sid, decision="approve")
            answers.append(result.content[0].text if result.is_error else "ACCEPTED")
            assert len(answers) < 5000, "the approval never came"
        assert "[human_required]" in answers[-1], answers[-1]
        assert [a["status"] for a in lc.approvals(session=sid, status="all")] == ["pending"]
        lc.stop(sid)
        lc.wait(sid, timeout=60)


def test_files_are_resources_and_traversal_is_refused(shared_daemon) -> None:
    """A session's files are listed as a JSON resource and read one by one; a path outside the record
    (or a `..` traversal) is refused."""
    server = build_server(shared_daemon.home)
    with shared_daemon.client() as lc:
        sid = lc.start("labd_testflows:writes_files")
        assert lc.wait(sid, timeout=60)["status"] == "completed"
        files = lc.files(sid)
    assert files, "the test workflow writes files"
    first = "data/values.csv"  # nested: the path parameter carries a slash
    assert first in {f["path"] for f in files}

    async def go() -> tuple[Any, Any, Any]:
        async with McpClient(server) as c:
            listing = await c.read_resource(f"labd://sessions/{sid}/files")
            one = await c.read_resource(f"labd://sessions/{sid}/file/{first}")
            errors = []
            for bad in ("../../daemon.key", "not-a-file.txt"):
                try:
                    await c.read_resource(f"labd://sessions/{sid}/file/{bad}")
                    errors.append(None)
                except Exception as exc:  # noqa: BLE001 - the SDK raises its own error type
                    errors.append(exc)
            return listing, one, errors

    listing, one, errors = anyio.run(go)
    assert first in {f["path"] for f in json.loads(listing.contents[0].text)["files"]}
    assert one.contents[0].text == "x,y\n1,2\n"
    assert all(e is not None for e in errors)


def test_every_listed_file_is_read_by_its_uri_whatever_its_name(shared_daemon, tmp_path) -> None:
    """File names with ``%``, ``?``, ``#``, spaces or non-ASCII: each file of the listing is read, by the ``uri`` the
    listing gives, as itself. Before, the listing had no URIs and a path written into one was decoded on reading:
    ``x%41.txt`` read the file ``xA.txt``, and ``q?.txt`` was an unknown resource."""
    names = ["x%41.txt", "xA.txt", "q?.txt", "h#1.txt", "a b/é ü.txt", "100%.txt"]
    flows = tmp_path / "oddnames.py"
    flows.write_text("import os\n\ndef write(ctx):\n"
                     f"    for name in {names!r}:\n"
                     "        os.makedirs(os.path.dirname(name) or '.', exist_ok=True)\n"
                     "        with open(name, 'w') as f:\n"
                     "            f.write('I am ' + name)\n")
    server = build_server(shared_daemon.home)
    with shared_daemon.client() as lc:
        sid = lc.start(f"{flows}:write")
        assert lc.wait(sid, timeout=60)["status"] == "completed"

    async def go() -> dict[str, str]:
        async with McpClient(server) as c:
            listing = json.loads((await c.read_resource(f"labd://sessions/{sid}/files")).contents[0].text)
            assert listing["total"] == len(listing["files"]) and not listing["more"]
            return {f["path"]: (await c.read_resource(f["uri"])).contents[0].text for f in listing["files"]}

    read = anyio.run(go)
    assert {name: read.get(name) for name in names} == {name: f"I am {name}" for name in names}


def test_real_stdio_round_trip(shared_daemon) -> None:
    """`python -m labd mcp` over real stdio: the SDK's client starts it, calls a tool, and stdout carries
    only protocol frames (the call would fail to parse otherwise)."""
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "labd", "--home", str(shared_daemon.home), "mcp"],
                                   env={k: v for k, v in os.environ.items() if k.startswith(("LABD", "XDG", "PYTHON",
                                                                                              "HOME", "PATH"))})

    async def go() -> Any:
        async with McpClient(params) as c:
            started = _data(await c.call_tool("start_session", {"workflow": "demo.count", "params": {"n": 1}}))
            sessions = _data(await c.call_tool("list_sessions", {}))
            return started, sessions

    started, sessions = anyio.run(go)
    assert any(s["id"] == started["session"] for s in sessions["sessions"])


def test_agents_use_tools_of_configured_mcp_servers_and_calls_are_tracked(isolated_env) -> None:
    """`[mcp.servers.adder]` in config: an agent created with mcp=["adder"] calls the server's tool for real
    (the server writes a side file), and the call is recorded as tool.call / tool.result like any tool.
    (A daemon of its own: the config is read when it starts.)"""
    from tests.conftest import SUPPORT, running_daemon

    side = isolated_env.parent / "adder.log"
    # Created up front: a Landlock-confined runner (and what it starts) cannot create new entries directly in
    # a directory that contains labd's home, here the test's tmp dir (docs/security.md, "Runners").
    side.write_text("")
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text(
        f'[mcp.servers.adder]\ncommand = "{sys.executable}"\nargs = ["{SUPPORT / "mcp_adder.py"}"]\n'
        f'env = {{ ADDER_LOG = "{side}" }}\n')
    with running_daemon(isolated_env) as d, d.client() as c:
        sid = c.start("labd_testflows:mcp_agent")
        s = c.wait(sid, timeout=90)
        assert s["status"] == "completed", s["reason"]
        kinds = {e["kind"]: e for e in c.history(sid)}
    assert side.read_text() == "2+40\n"
    assert kinds["tool.call"]["payload"]["name"] == "adder_add"
    assert kinds["tool.result"]["payload"]["status"] == "ok"
    assert "42" in str(kinds["tool.result"]["payload"])


def test_bad_mcp_config_is_refused_at_start(isolated_env) -> None:
    """An MCP server with neither command nor url stops the daemon at start with a clear message."""
    import subprocess

    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text('[mcp.servers.broken]\nargs = ["x"]\n')
    out = subprocess.run([sys.executable, "-m", "labd", "--home", str(isolated_env), "serve"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "broken" in out.stderr and "command" in out.stderr


class _RawStdio:
    """`python -m labd mcp` driven line by line over raw stdio, as a buggy or hostile client would: each reply line
    is collected by a reader thread, and :meth:`reply` waits for the next one up to a deadline."""

    def __init__(self, home: Any, log: Any) -> None:
        self._log = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-m", "labd", "--home", str(home), "mcp"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        self._replies: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._replies.put(line)

    def send(self, message: dict[str, Any] | bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((message if isinstance(message, bytes) else json.dumps(message).encode()) + b"\n")
        self.proc.stdin.flush()

    def reply(self, timeout: float = 30.0) -> dict[str, Any]:
        try:
            return dict(json.loads(self._replies.get(timeout=timeout)))
        except queue.Empty:
            raise AssertionError(f"no reply from `labd mcp` within {timeout}s") from None

    def initialize(self) -> None:
        self.send({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                   "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                              "clientInfo": {"name": "raw", "version": "1"}}})
        assert "result" in self.reply()
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def still_serves(self, rid: int) -> None:
        """tools/list is answered as usual."""
        self.send({"jsonrpc": "2.0", "id": rid, "method": "tools/list"})
        reply = self.reply()
        assert reply["id"] == rid and "start_session" in {t["name"] for t in reply["result"]["tools"]}, reply

    def peak_rss(self) -> int:
        """The server process's peak resident memory so far, in bytes (VmHWM)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            assert self.proc.wait(timeout=30) == 0  # end of input: the server stops cleanly
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()


@pytest.fixture
def raw_mcp(isolated_env: Any, tmp_path: Any) -> Any:
    """A `labd mcp` process past the MCP handshake (no daemon needed: nothing here reaches one)."""
    server = _RawStdio(isolated_env, tmp_path / "mcp.stderr")
    try:
        server.initialize()
        yield server
    finally:
        server.close()


def _deep_call(rid: int, depth: int) -> bytes:
    return (f'{{"jsonrpc":"2.0","id":{rid},"method":"tools/call","params":{{"name":"get_session",'
            f'"arguments":{{"session":' + "[" * depth + "]" * depth + "}}}").encode()


@pytest.mark.parametrize("depth", [300, 100_000])
def test_a_request_nested_too_deep_gets_an_error_reply_and_the_server_keeps_serving(raw_mcp: Any, depth: int) -> None:
    """A tools/call whose arguments nest 300 / 100000 levels (which the SDK's parser drops without a word, leaving
    the client waiting forever) is answered with a JSON-RPC invalid-request error carrying its id; the server
    goes on answering later requests."""
    raw_mcp.send(_deep_call(7, depth))
    reply = raw_mcp.reply()
    assert reply["id"] == 7 and reply.get("error", {}).get("code") == -32600, reply
    assert "nested deeper than" in reply["error"]["message"]
    raw_mcp.still_serves(8)
    raw_mcp.send(_deep_call(9, 120))  # within the limit: handed to the server (a tool error: not a session name)
    within = raw_mcp.reply()
    assert within["id"] == 9 and within["result"]["isError"], within


def test_lines_that_are_not_requests_get_json_rpc_errors(raw_mcp: Any) -> None:
    """Text that is not JSON gets a parse error (-32700), with the id when the line shows it (else null), JSON that
    is not a JSON-RPC message an invalid-request error (-32600); a broken response is dropped unanswered, and
    blank lines are ignored. Each is answered in turn and the server keeps serving."""
    raw_mcp.send(b"hello")
    assert raw_mcp.reply() == {"jsonrpc": "2.0", "id": None, "error": {
        "code": -32700, "message": "Parse error: Invalid JSON: expected value at line 1 column 1"}}
    raw_mcp.send(b'{"jsonrpc":"2.0","id":"abc","method":"tools/list","params":{')
    cut = raw_mcp.reply()
    assert cut["id"] == "abc" and cut.get("error", {}).get("code") == -32700, cut
    raw_mcp.send(b'{"jsonrpc":"2.0","id":5,"result":[}')  # a response: not answered
    raw_mcp.send(b"   ")
    raw_mcp.send(b'{"id":6,"method":"tools/list"}')
    invalid = raw_mcp.reply()
    assert invalid["id"] == 6 and invalid.get("error", {}).get("code") == -32600, invalid  # the next reply: 5 got none
    raw_mcp.still_serves(8)


def test_an_oversized_line_is_refused_with_bounded_memory(raw_mcp: Any) -> None:
    """A 64 MiB request line is answered with an invalid-request error carrying its id, read and thrown away as
    it arrives (the server's peak memory grows by far less than the line), and the server keeps serving."""
    from labd.frontends.mcp_stdio import MAX_LINE

    size = 64 * 1024 * 1024
    assert size > 3 * MAX_LINE
    before = raw_mcp.peak_rss()
    head = b'{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"get_session","arguments":{"session":"'
    raw_mcp.send(head + b"a" * size + b'"}}}')
    reply = raw_mcp.reply(timeout=60)
    assert reply["id"] == 11 and reply.get("error", {}).get("code") == -32600, reply
    assert "longer than" in reply["error"]["message"]
    assert raw_mcp.peak_rss() - before < 3 * MAX_LINE
    raw_mcp.still_serves(12)


def test_a_request_with_a_fractional_or_null_id_gets_an_error_reply(raw_mcp: Any) -> None:
    """`labd mcp` answers a tools/list whose id is 1.5 or null (the SDK took it for a notification and never
    answered, leaving the client waiting) with an invalid-request error, id null; the server keeps serving."""
    for rid in (b"1.5", b"null"):
        raw_mcp.send(b'{"jsonrpc":"2.0","id":' + rid + b',"method":"tools/list"}')
        reply = raw_mcp.reply(timeout=15)
        assert reply["id"] is None and reply.get("error", {}).get("code") == -32600, reply
    raw_mcp.still_serves(12)


LARGE_FLOWS = """
import sys


def large(ctx):
    ctx.emit("table", {"rows": ["r" * 1000] * 1000})  # one custom event of ~1 MB
    for _ in range(8):  # 2 MB of ordinary output, captured in pieces
        sys.stdout.write("y" * 250_000)
        sys.stdout.flush()
    ctx._emit("output", {"stream": "stdout", "text": "z" * 1_000_000})  # one piece of output of 1 MB
    return "done"
"""


def test_what_a_tool_returns_to_the_model_is_bounded(shared_daemon, tmp_path) -> None:
    """A session's large record reaches an MCP client in bounded replies: read_events returns at most ~200,000
    characters of events a call (an event larger than that alone: its payload's size and first 2,000 characters in
    `payload_cut`), paging through all of them with `since`; read_output at most 200,000 characters a call, a single
    larger piece paged inside with `next_offset`, whole. Before, one read_events call returned a whole daemon page
    (8 MB here: 4 MB, 5000 events of any size) and read_output a whole oversized piece of output (then: its start,
    the rest left out)."""
    bound, head = 200_000, 2_000  # mcp_read.MAX_TEXT, mcp_read.EVENT_HEAD

    flows = tmp_path / "largeflows.py"
    flows.write_text(LARGE_FLOWS)
    server = build_server(shared_daemon.home)
    with shared_daemon.client() as lc:
        sid = lc.start(f"{flows}:large")
        assert lc.wait(sid, timeout=60)["status"] == "completed"
        stored = list(lc.history(sid))

    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with McpClient(server) as c:
            events, outputs, since = [], [], 0
            while True:
                page = _data(await c.call_tool("read_events", {"session": sid, "since": since, "limit": 5000,
                                                                "max_chars": bound}))
                assert len(json.dumps(page["events"])) <= bound + 100, "one page over the bound"
                events += page["events"]
                since = page["events"][-1]["seq"] if page["events"] else since
                if not page["more"]:
                    break
            since, offset = 0, 0
            while True:
                out = _data(await c.call_tool("read_output", {"session": sid, "since": since, "max_chars": bound,
                                                              "offset": offset}))
                assert len(out["text"]) <= bound
                outputs.append(out)
                since, offset = out["next_since"], out["next_offset"]
                if not out["more"]:
                    break
            return events, outputs

    events, outputs = anyio.run(go)
    assert [e["seq"] for e in events] == [e["seq"] for e in stored], "paging skipped or repeated events"
    table = [e for e in events if e["kind"] == "custom"]
    assert len(table) == 1 and table[0]["payload"] is None
    assert table[0]["payload_cut"]["chars"] > 1_000_000 and len(table[0]["payload_cut"]["head"]) == head
    big = [e["seq"] for e in stored if len(json.dumps(e)) > bound]  # the table and the 1 MB piece
    assert len(big) == 2 and [e["seq"] for e in events if e["payload"] is None] == big
    text = "".join(o["text"] for o in outputs)
    assert text.count("y") == 2_000_000, "ordinary output is paged whole"
    assert text.count("z") == 1_000_000, "the 1 MB piece is paged whole"
    assert sum(1 for o in outputs if o["next_offset"]) >= 4  # inside it: 200,000 characters a call


def test_a_tool_result_too_large_for_a_model_is_a_tool_error(shared_daemon, monkeypatch) -> None:
    """A tool result over MAX_RESULT characters (as the model sees it: indented JSON) is an MCP tool error with code
    result_too_large saying how to ask this tool for less, never a reply of that size (here the limit is lowered to
    a few characters)."""
    from labd.frontends import mcp_read

    monkeypatch.setattr(mcp_read, "MAX_RESULT", 50, raising=False)
    result = _call(build_server(shared_daemon.home), "list_workflows")
    assert result.is_error
    assert "[result_too_large]" in result.content[0].text
    with shared_daemon.client() as lc:
        sid = lc.start("demo.count", params={"n": 2})
        lc.wait(sid, timeout=60)
    dag = _call(build_server(shared_daemon.home), "get_dag", session=sid, newest=40)
    assert dag.is_error and "newest=10" in dag.content[0].text


MANY_FLOWS = """
import sys


def many(ctx):
    for i in range(1000):  # small events: a call returns hundreds of them
        ctx.emit("tick", {"i": i})
    for i in range(200):  # 8 MB of events of 40 KB: a call returns ~5
        ctx.emit("blob", {"i": i, "text": "b" * 40_000})
    for _ in range(200):  # 8 MB of output
        sys.stdout.write("o" * 40_000)
        sys.stdout.flush()
    return "done"
"""


def test_a_tool_reads_from_the_daemon_about_what_it_returns(shared_daemon, tmp_path, monkeypatch) -> None:
    """read_events and read_output ask the daemon for pages sized to what they return (~200,000 characters), not
    for a whole daemon page: paging through 8 MB of 40 KB events and 8 MB of output, no call receives more than
    twice its bound from the daemon, and paging still yields every event once. Before, a read_events call with its
    default limit (200) received 200 events of 40 KB (8 MB) to return 5, and read_output a whole page (~8 MB)."""
    from labd.ipc.client import Client

    bound = 200_000  # mcp_read.MAX_TEXT
    flows = tmp_path / "manyflows.py"
    flows.write_text(MANY_FLOWS)
    with shared_daemon.client() as lc:
        sid = lc.start(f"{flows}:many")
        assert lc.wait(sid, timeout=120)["status"] == "completed"
        stored = list(lc.history(sid))
        output = "".join(e["payload"]["text"] for e in lc.history(sid, kinds=["output"]))
        # the protocol's `max_bytes` (what the tools use): a page of about that many bytes, at least one event
        before_big = next(e["seq"] for e in stored if len(json.dumps(e)) > 40_000) - 1
        big = lc.events(sid, since=before_big, max_bytes=100_000)
        assert [len(big["events"]), big["more"]] == [2, True]
        assert len(lc.events(sid, since=before_big, max_bytes=1)["events"]) == 1
        with pytest.raises(LabdError) as refused:
            lc.events(sid, max_bytes=0)
        assert refused.value.code == "bad_request"
    received: list[int] = []  # bytes of JSON the server's client received from the daemon, per events.query
    real_events = Client.events

    def counted(self: Client, *args: Any, **kwargs: Any) -> dict[str, Any]:
        page = real_events(self, *args, **kwargs)
        received.append(len(json.dumps(page)))
        return page

    monkeypatch.setattr(Client, "events", counted)
    server = build_server(shared_daemon.home)

    async def go() -> tuple[list[dict[str, Any]], str, list[int], list[int]]:
        per_events_call: list[int] = []
        per_output_call: list[int] = []
        async with McpClient(server) as c:
            events, since = [], 0
            while True:
                before = len(received)
                page = _data(await c.call_tool("read_events", {"session": sid, "since": since, "max_chars": bound}))
                per_events_call.append(sum(received[before:]))
                events += page["events"]
                since = page["events"][-1]["seq"] if page["events"] else since
                if not page["more"]:
                    break
            text, since, offset = "", 0, 0
            while True:
                before = len(received)
                out = _data(await c.call_tool("read_output", {"session": sid, "since": since, "max_chars": bound,
                                                              "offset": offset}))
                per_output_call.append(sum(received[before:]))
                text += out["text"]
                since, offset = out["next_since"], out["next_offset"]
                if not out["more"]:
                    break
        return events, text, per_events_call, per_output_call

    events, text, per_events_call, per_output_call = anyio.run(go)
    assert [e["seq"] for e in events] == [e["seq"] for e in stored], "paging skipped or repeated events"
    assert text == output, "output paged whole"
    assert max(per_events_call) <= 2 * bound, f"read_events received {max(per_events_call):,} bytes in one call"
    assert max(per_output_call) <= 2 * bound, f"read_output received {max(per_output_call):,} bytes in one call"
