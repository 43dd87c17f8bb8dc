"""`labd mcp` for a model on a bad day (MCP review): what it may start, output followed while it is written, files
larger than a reply, answers that must not lie, and a daemon restarted under it. Against real daemons, through the
official SDK's client."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client as McpClient

from labd.frontends import mcp
from labd.frontends.mcp import build_server
from labd.ipc.client import Client
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(180)

FLOWS = '''
import os, time
from pathlib import Path


def mark(ctx, path: str):
    Path(path).write_text("ran")


def late(ctx, gate: str):
    while not os.path.exists(gate):
        time.sleep(0.02)
    print("late line")
    time.sleep(30)


def big_files(ctx):
    (ctx.workdir / "greek.txt").write_text("a" + "\\u03bb" * 700_000)  # 1.4 MB: byte 1,000,000 splits a character
    (ctx.workdir / "blob.bin").write_bytes(bytes(range(256)) * 40)


def many_files(ctx):
    for i in range(2000):
        (ctx.workdir / f"{'result-of-a-long-experiment-' * 2}{i:05d}.csv").write_text(str(i))


def nuls(ctx):
    import sys
    sys.stdout.write("a" + "\\0" * 150_000 + "z\\n")
    sys.stdout.flush()
    (ctx.workdir / "nul.txt").write_text("b" + "\\0" * 70_000 + "\\u03bb" * 10 + "y")


def boom(ctx):
    raise RuntimeError("boom")


def ask(ctx):
    print("picked", ctx.approval("pick", "Which colour? " + "p" * 5000, options=["green", "red"]))
'''


def _data(result: Any) -> Any:
    assert not result.is_error, result.content
    data = result.structured_content
    return data["result"] if isinstance(data, dict) and set(data) == {"result"} else data


async def _tool(server: Any, name: str, **args: Any) -> Any:
    async with McpClient(server) as c:
        return await c.call_tool(name, args)


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    path = tmp_path / "mcpflows.py"
    path.write_text(FLOWS)
    return path


def test_a_model_starts_only_the_built_ins_unless_more_are_allowed(shared_daemon, flows: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """By default the MCP client may start the daemon's built-in workflows only: a file or module it names is refused
    (``not_allowed``) and its code never runs. A model steered by what a session printed could otherwise run any
    Python as the user (``/tmp/x.py:shell``), past every policy. ``labd mcp --workflow PATTERN`` allows more."""
    marker = tmp_path / "ran"
    with shared_daemon.client() as lc:
        before = len(lc.sessions(limit=1000))
    refused = anyio.run(lambda: _tool(build_server(shared_daemon.home), "start_session",
                                      workflow=f"{flows}:mark", params={"path": str(marker)}))
    assert refused.is_error and "[not_allowed]" in refused.content[0].text
    assert "--workflow" in refused.content[0].text
    with shared_daemon.client() as lc:
        assert len(lc.sessions(limit=1000)) == before, "a session was started"
    assert not marker.exists()
    allowed = build_server(shared_daemon.home, workflows=[f"{flows.parent}/*.py:*"])
    started = _data(anyio.run(lambda: _tool(allowed, "start_session", workflow=f"{flows}:mark",
                                            params={"path": str(marker)})))
    with shared_daemon.client() as lc:
        assert lc.wait(started["session"], timeout=60)["status"] == "completed"
    assert marker.read_text() == "ran"
    outside = flows.parent.parent / f"{flows.parent.name}-outside.py"
    outside.write_text(FLOWS)
    escape = anyio.run(lambda: _tool(allowed, "start_session", params={"path": str(marker) + "2"},
                                     workflow=f"{flows.parent}/../{outside.name}:mark"))
    outside.unlink()
    assert escape.is_error and "[not_allowed]" in escape.content[0].text  # `..` is resolved, then matched
    home = tmp_path / "home"
    home.mkdir()
    (home / "tilde.py").write_text(FLOWS)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(flows.parent)  # a server started in the allowed folder: `~/x` written there matched it
    tilde = anyio.run(lambda: _tool(allowed, "start_session", workflow="~/tilde.py:mark",
                                    params={"path": str(marker) + "3"}))
    assert tilde.is_error and "[not_allowed]" in tilde.content[0].text
    assert not Path(str(marker) + "2").exists() and not Path(str(marker) + "3").exists()
    with shared_daemon.client() as lc:  # the operator's own session of a file workflow, failed
        failed = lc.start(f"{flows}:boom")
        assert lc.wait(failed, timeout=60)["status"] == "failed"
    resumed = anyio.run(lambda: _tool(build_server(shared_daemon.home), "resume_session", session=failed))
    assert resumed.is_error and "[not_allowed]" in resumed.content[0].text  # a new process would run its code
    builtin = _data(anyio.run(lambda: _tool(build_server(shared_daemon.home), "start_session", workflow="demo.count",
                                            params={"n": 1})))
    assert builtin["session"]


def test_output_written_between_two_reads_is_not_skipped(shared_daemon, flows: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """read_output finding no output moves ``next_since`` past the events that are not output, but never past
    output stored meanwhile. Here the session prints just after the server's events query came back empty (the
    query is made to wait for it): the line is in this call's reply or the next. Before, ``next_since`` was the
    session's last seq read after the query, which took in the new line: following a session that printed 3,000
    lines lost 82."""
    gate = tmp_path / "gate"
    with shared_daemon.client() as lc:
        sid = lc.start(f"{flows}:late", params={"gate": str(gate)})
        wait_until(lambda: lc.session(sid)["status"] == "running", timeout=60, what="the session running")
    real_events = Client.events

    def racing(self: Client, *args: Any, **kwargs: Any) -> dict[str, Any]:
        page = real_events(self, *args, **kwargs)
        if kwargs.get("kinds") == ["output"] and not page["events"] and not gate.exists():
            gate.touch()  # the session prints now, after this query and before whatever the server asks next
            with shared_daemon.client() as lc:
                wait_until(lambda: list(lc.history(sid, kinds=["output"])), timeout=60, what="the late line stored")
        return page

    monkeypatch.setattr(Client, "events", racing)
    server = build_server(shared_daemon.home)

    async def follow() -> str:
        text, since, offset = "", 0, 0
        async with McpClient(server) as c:
            for _ in range(3):
                out = _data(await c.call_tool("read_output", {"session": sid, "since": since, "offset": offset}))
                text, since, offset = text + out["text"], out["next_since"], out["next_offset"]
        return text

    try:
        assert anyio.run(follow) == "late line\n"
    finally:
        with shared_daemon.client() as lc:
            lc.stop(sid, 1.0)


def test_a_seq_past_the_end_is_an_error_not_an_empty_answer(shared_daemon) -> None:
    """read_output with ``since`` past the session's last event says so; an empty answer with ``more`` false read as
    "nothing more will come", and every later line was missed."""
    with shared_daemon.client() as lc:
        sid = lc.start("demo.count", params={"n": 1})
        last = lc.wait(sid, timeout=60)["last_seq"]
    result = anyio.run(lambda: _tool(build_server(shared_daemon.home), "read_output", session=sid,
                                     since=10**12))
    assert result.is_error and "[bad_request]" in result.content[0].text and f"seq {last}" in result.content[0].text


def test_a_file_larger_than_a_reply_is_read_whole_in_pieces(shared_daemon, flows: Path) -> None:
    """read_file pages through a 1.4 MB text file in pieces cut on character boundaries, and their concatenation is
    the file; bytes that are not text come as base64. The resource of that file says where it was cut and how to
    read on. Before, the resource ended mid-row at 1,000,000 bytes with nothing to say so, and a cut inside a
    character turned the text into bytes."""
    server = build_server(shared_daemon.home)
    with shared_daemon.client() as lc:
        sid = lc.start(f"{flows}:big_files")
        assert lc.wait(sid, timeout=60)["status"] == "completed"
        workdir = Path(lc.request("session.files", session=sid)["workdir"])
    whole = (workdir / "greek.txt").read_text()

    async def go() -> tuple[str, int, Any, Any, Any]:
        async with McpClient(server) as c:
            text, offset, calls = "", 0, 0
            while True:
                piece = _data(await c.call_tool("read_file", {"session": sid, "path": "greek.txt", "offset": offset,
                                                              "max_chars": 200_000}))
                assert len(piece["text"]) <= 200_000
                text, offset, calls = text + piece["text"], piece["next_offset"], calls + 1
                if not piece["more"]:
                    break
            binary = _data(await c.call_tool("read_file", {"session": sid, "path": "blob.bin"}))
            resource = await c.read_resource(f"labd://sessions/{sid}/file/greek.txt")
            listed = _data(await c.call_tool("list_files", {"session": sid, "limit": 1}))
            return text, calls, binary, resource, listed

    text, calls, binary, resource, listed = anyio.run(go)
    assert text == whole and calls >= 7
    import base64
    assert base64.b64decode(binary["base64"]) == bytes(range(256)) * 40 and not binary["more"]
    served = resource.contents[0].text
    assert served.startswith("a\u03bb") and "[labd: the first 999,999 of the file's 1,400,001 bytes" in served
    assert "offset=999999" in served
    assert listed["total"] == 2 and len(listed["files"]) == 1 and listed["more"]


def test_the_files_listing_resource_fits_a_model_and_says_how_many_there_are(shared_daemon, flows: Path) -> None:
    """A session of 2,000 files: the listing resource holds the first files that fit in 200,000 characters, in the
    record's order, with ``total`` and ``more``, and a listed file reads by its ``uri``; list_files pages through the
    rest. Before, the resource was the whole list (10,000 files: 2.9 million characters in a model's context)."""
    server = build_server(shared_daemon.home)
    with shared_daemon.client() as lc:
        sid = lc.start(f"{flows}:many_files")
        assert lc.wait(sid, timeout=120)["status"] == "completed"
        recorded = [f["path"] for f in lc.files(sid)]
    assert len(recorded) == 2000

    async def go() -> tuple[str, tuple[str, str], Any]:
        async with McpClient(server) as c:
            text = (await c.read_resource(f"labd://sessions/{sid}/files")).contents[0].text
            last = json.loads(text)["files"][-1]
            return text, (last["path"], (await c.read_resource(last["uri"])).contents[0].text), \
                _data(await c.call_tool("list_files", {"session": sid, "offset": 1990, "limit": 20}))

    text, last_text, tail = anyio.run(go)
    listing = json.loads(text)
    assert len(text) <= 200_000 and listing["total"] == 2000 and listing["more"]
    listed = [f["path"] for f in listing["files"]]
    assert 100 < len(listed) < 2000 and listed == recorded[:len(listed)]
    assert last_text[1] == str(int(last_text[0][-9:-4]))  # the file of that name
    assert [f["path"] for f in tail["files"]] == recorded[1990:] and not tail["more"]


def test_a_model_reads_an_approval_whole_before_answering(shared_daemon, flows: Path) -> None:
    """list_approvals cuts prompts to 2,000 characters unless ``full``: with it, the model reads the 5,014-character
    prompt it is asked to answer (it could only approve what it had not seen whole)."""
    server = build_server(shared_daemon.home)
    with shared_daemon.client() as lc:
        sid = lc.start(f"{flows}:ask")
        wait_until(lambda: lc.approvals(session=sid), timeout=60, what="the approval asked")
    try:
        cut = _data(anyio.run(lambda: _tool(server, "list_approvals", session=sid)))[0]
        whole = _data(anyio.run(lambda: _tool(server, "list_approvals", session=sid, full=True)))[0]
        assert cut["truncated"] and len(cut["prompt"]) <= 2_000
        assert whole["prompt"] == "Which colour? " + "p" * 5000
    finally:
        with shared_daemon.client() as lc:
            lc.stop(sid, 1.0)


def test_stopping_twice_and_costs_without_nodes(shared_daemon) -> None:
    """stop_session is idempotent, as its annotation says: a session that has ended answers ``already_ended`` with
    its status (it was a ``not_running`` error). get_cost with ``by_node`` false leaves out the per-node sums, which
    made a long session's reply too large, with no way to ask for less."""
    server = build_server(shared_daemon.home)
    with shared_daemon.client() as lc:
        sid = lc.start("demo.count", params={"n": 1})
        lc.wait(sid, timeout=60)
    again = _data(anyio.run(lambda: _tool(server, "stop_session", session=sid)))
    assert again == {"session": sid, "status": "completed", "already_ended": True}
    cost = _data(anyio.run(lambda: _tool(server, "get_cost", session=sid, by_node=False)))
    assert "total" in cost and "by_model" in cost and "by_node" not in cost and "by_step" not in cost


def test_a_call_made_while_the_daemon_restarts_waits_for_it(daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tool call made while no daemon serves (``labd shutdown`` then ``labd serve``) by a server that reached one
    before waits for the next one and is answered; it failed at once with ``no_daemon``, though nothing had been
    sent. Past the wait it still fails so, and a server that never reached a daemon fails at once (no daemon at all
    is no restart: 15 s per call was the reviewer's finding)."""
    monkeypatch.setattr(mcp, "RESTART_WAIT", 120.0)  # a deadline for a loaded machine, not a goal
    server = build_server(daemon.home)
    assert _data(anyio.run(lambda: _tool(server, "list_workflows")))
    daemon.stop()
    answer: list[Any] = []
    caller = threading.Thread(target=lambda: answer.append(anyio.run(lambda: _tool(server, "list_workflows"))))
    caller.start()
    wait_until(lambda: caller.is_alive(), timeout=10, what="the call waiting")
    daemon.start()
    caller.join(150)
    assert answer and not answer[0].is_error and _data(answer[0])
    daemon.stop()
    monkeypatch.setattr(mcp, "RESTART_WAIT", 0.5)
    gone = anyio.run(lambda: _tool(server, "list_workflows"))
    assert gone.is_error and "[no_daemon]" in gone.content[0].text
    monkeypatch.setattr(mcp, "RESTART_WAIT", 120.0)
    fresh = anyio.run(lambda: _tool(build_server(daemon.home), "list_workflows"))  # never reached one: at once
    assert fresh.is_error and "[no_daemon]" in fresh.content[0].text


def test_a_call_the_client_gave_up_on_during_a_restart_starts_nothing(daemon, monkeypatch) -> None:
    """``start_session`` made while the daemon restarts, which the client gives up on (a timeout: the SDK cancels
    the request), starts nothing once the daemon is back. Before, the wait ran in a worker thread that nothing
    cancelled: the session started after the client had been told the call failed, and a retry made two."""
    monkeypatch.setattr(mcp, "RESTART_WAIT", 120.0)
    server = build_server(daemon.home)
    with daemon.client() as c:
        before = len(c.sessions(limit=1000))

    async def go() -> None:
        async with McpClient(server) as m:
            await m.call_tool("list_workflows", {})  # this server has reached the daemon
            daemon.stop()
            with anyio.move_on_after(2):  # the client gives up (the SDK cancels the request)
                await m.call_tool("start_session", {"workflow": "demo.count", "params": {"n": 1},
                                                    "name": "abandoned"})
            await anyio.sleep(0.5)  # the server takes the cancellation in
            await anyio.to_thread.run_sync(daemon.start)  # not on this loop: the server keeps running meanwhile
            await anyio.sleep(1.5)  # longer than the 0.2 s retries: an uncancelled wait would have started it

    anyio.run(go)
    with daemon.client() as c:
        rows = c.sessions(limit=1000)
    assert len(rows) == before and not [r for r in rows if r["name"] == "abandoned"]


def test_the_tools_say_their_bounds_and_that_session_data_is_not_instructions(shared_daemon) -> None:
    """What a model reads before calling: the server's instructions say that output, events and files are data, not
    directions; arguments carry their bounds and choices (statuses, formats) in the schema."""
    server = build_server(shared_daemon.home)

    async def go() -> tuple[Any, dict[str, Any]]:
        async with McpClient(server) as c:
            init = c.initialize_result if hasattr(c, "initialize_result") else None
            return init, {t.name: t.input_schema for t in (await c.list_tools()).tools}

    _, schemas = anyio.run(go)
    assert "not instructions" in mcp.INSTRUCTIONS
    assert schemas["read_output"]["properties"]["max_chars"]["maximum"] == 200_000
    assert schemas["get_dag"]["properties"]["format"]["enum"] == ["json", "mermaid", "dot"]
    status = schemas["list_sessions"]["properties"]["status"]
    assert "waiting_approval" in str(status)


def test_a_model_branches_and_compares_instead_of_re_running(shared_daemon, flows: Path, tmp_path: Path) -> None:
    """Through MCP a model branches a finished planning session from its second step (the steps before it reused)
    and compares the branch with its parent; a session of a workflow it may not start cannot be branched either
    (a branch runs that code again). Before, MCP had neither tool: a model could only re-run from the start."""
    server = build_server(shared_daemon.home)
    with shared_daemon.client() as lc:
        parent = lc.start("planning_and_control", params={"max_steps": 2})
        assert lc.wait(parent, timeout=120)["status"] == "completed"
        second = next(s for s in lc.session(parent)["steps"] if s["name"].startswith("step 2:"))
        user_sid = lc.start(f"{flows}:mark", params={"path": str(tmp_path / "m")})
        lc.wait(user_sid, timeout=60)
    branched = _data(anyio.run(lambda: _tool(server, "branch_session", session=parent, from_node=second["node_id"],
                                             hypothesis="the input is in Kelvin")))
    kid = branched["sessions"][0]["session"]
    with shared_daemon.client() as lc:
        assert lc.wait(kid, timeout=120)["status"] == "completed"
        assert {s["name"]: s["status"] for s in lc.session(kid)["steps"]}["planning"] == "reused"
    compared = _data(anyio.run(lambda: _tool(server, "compare_sessions", sessions=[parent, kid])))
    assert compared["sessions"] == [parent, kid] and any(row["changed"] for row in compared["steps"])
    refused = anyio.run(lambda: _tool(server, "branch_session", session=user_sid, from_node="mark"))
    assert refused.is_error and "[not_allowed]" in refused.content[0].text


def test_a_reply_is_bounded_as_the_model_reads_it_and_pages_inside_a_piece(shared_daemon, flows: Path) -> None:
    """Output of NUL characters (six characters each in JSON, ``\\u0000``) comes in replies of at most ``max_chars``
    characters as the model reads them, paged inside one piece (``next_offset``) and whole; so does a file of them.
    Before, 50,000 characters of such output reached the model as 393,292, and a piece over 200,000 was cut for
    good. A file read from inside a character starts at the next one; an offset past the end is an error."""
    server = build_server(shared_daemon.home)
    with shared_daemon.client() as lc:
        sid = lc.start(f"{flows}:nuls")
        assert lc.wait(sid, timeout=60)["status"] == "completed"
    budget = 20_000

    async def go() -> tuple[str, list[int], str, list[int], Any, Any, Any]:
        async with McpClient(server) as c:
            text, since, offset, sizes = "", 0, 0, []
            while True:
                out = _data(await c.call_tool("read_output", {"session": sid, "since": since, "offset": offset,
                                                              "max_chars": budget}))
                sizes.append(len(json.dumps(out["text"], ensure_ascii=False)) - 2)
                text, since, offset = text + out["text"], out["next_since"], out["next_offset"]
                if not out["more"]:
                    break
            body, at, file_sizes = "", 0, []
            while True:
                piece = _data(await c.call_tool("read_file", {"session": sid, "path": "nul.txt", "offset": at,
                                                              "max_chars": budget}))
                file_sizes.append(len(json.dumps(piece["text"], ensure_ascii=False)) - 2)
                body, at = body + piece["text"], piece["next_offset"]
                if not piece["more"]:
                    break
            inside = _data(await c.call_tool("read_file", {"session": sid, "path": "nul.txt", "offset": 70_002}))
            past = await c.call_tool("read_file", {"session": sid, "path": "nul.txt", "offset": 10**9})
            gone = await c.call_tool("read_file", {"session": sid, "path": "nul.txt", "offset": 2**62 + 1})
            return text, sizes, body, file_sizes, inside, past, gone

    text, sizes, body, file_sizes, inside, past, gone = anyio.run(go)
    assert text == "a" + "\0" * 150_000 + "z\n" and max(sizes) <= budget and len(sizes) >= 40
    assert body == "b" + "\0" * 70_000 + "\u03bb" * 10 + "y" and max(file_sizes) <= budget
    assert inside["offset"] == 70_003 and inside["text"] == "\u03bb" * 9 + "y"  # byte 70,002 is inside a character
    assert past.is_error and "[bad_request]" in past.content[0].text
    assert gone.is_error  # beyond any file: refused by the schema, not an uncaught error

