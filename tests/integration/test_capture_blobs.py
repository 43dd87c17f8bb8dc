"""Full fidelity: complete LLM requests and responses, large texts as content-addressed blobs."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from labd_fidelityflows import big_text  # noqa: E402 - the workflows module lives beside the other test workflows


@pytest.fixture
def client(shared_daemon) -> Iterator[Any]:
    """A client of the module's shared daemon (the test starts and asserts on its own session)."""
    with shared_daemon.client() as c:
        yield c


def _blob_rows(home):
    with sqlite3.connect(home / "labd.db") as conn:
        return conn.execute("SELECT sha256, size FROM blobs").fetchall(), \
            conn.execute("SELECT session_id, sha256 FROM blob_refs").fetchall()


def test_a_100k_character_reply_round_trips_byte_for_byte(shared_daemon) -> None:
    """A 100,000-character reply (with multi-byte characters) is stored whole: the stored event holds a
    blob reference, ``events.query full`` returns the exact text, in llm.response and agent.message."""
    c = shared_daemon.client()
    sid = c.start("labd_fidelityflows:big_reply", params={"chars": 100_000})
    final = c.wait(sid, timeout=60)
    assert final["status"] == "completed", final["reason"]
    expected = big_text(100_000)
    stored = [e for e in c.history(sid) if e["kind"] == "llm.response"]
    assert len(stored) == 1 and stored[0]["payload"]["content"]["$blob"]
    assert "blobs" not in stored[0]["payload"]
    full = list(c.history(sid, full=True))
    (resp,) = [e for e in full if e["kind"] == "llm.response"]
    (msg,) = [e for e in full if e["kind"] == "agent.message"]
    assert resp["payload"]["content"] == expected
    assert resp["payload"]["content"].encode() == expected.encode()
    assert msg["payload"]["content"] == expected
    blobs, refs = _blob_rows(shared_daemon.home)
    own = {sha for session, sha in refs if session == sid}  # the module's shared daemon: other tests' blobs too
    assert len(expected.encode()) in [size for sha, size in blobs if sha in own]


def test_the_complete_request_is_recorded(shared_daemon) -> None:
    """Each llm.request holds the system prompt, every message sent, the tool schemas and the model's
    parameters; the full response holds content, tool calls with arguments, finish reason and usage."""
    c = shared_daemon.client()
    sid = c.start("labd_fidelityflows:plain_ag2")
    assert c.wait(sid, timeout=90)["status"] == "completed"
    events = list(c.history(sid, full=True, agent="counter"))
    requests = [e for e in events if e["kind"] == "llm.request"]
    responses = [e for e in events if e["kind"] == "llm.response"]
    assert len(requests) == len(responses) == 2
    first, second = (r["payload"]["request"] for r in requests)
    assert first["system"][0].startswith("Count words.")
    assert [t["function"]["name"] for t in first["tools"]] == ["word_count"]
    assert first["tools"][0]["function"]["parameters"]["properties"]["text"]["type"] == "string"
    # the second call is sent the whole history: the request, the model's tool call and the tool's result
    assert second["messages"][0] == first["messages"][0]
    types = [m["type"] for m in second["messages"]]
    assert "ModelResponse" in types and "ToolResultsEvent" in types
    assert "How many words?" in str(first["messages"])
    assert responses[0]["payload"]["tool_calls"][0]["name"] == "word_count"
    assert "three little words" in responses[0]["payload"]["tool_calls"][0]["arguments"]
    assert responses[0]["payload"]["finish_reason"] == "tool_calls"
    assert responses[1]["payload"]["usage"]["prompt_tokens"] > 0
    assert all(e["payload"]["agent"] == "counter" for e in events if "agent" in e["payload"])


def test_a_shared_big_system_prompt_is_stored_once_for_500_calls(daemon) -> None:
    """500 LLM calls with the same 80,000-character (~20 k-token) system prompt: one blob in the store,
    one reference row, and all 500 stored requests refer to it by the same sha256. (A daemon of its own: the store's
    whole blob table is this session's.)"""
    c = daemon.client()
    sid = c.start("labd_fidelityflows:shared_prompt", params={"calls": 500, "prompt_chars": 80_000})
    final = c.wait(sid, timeout=110)
    assert final["status"] == "completed", final["reason"]
    requests = [e for e in c.history(sid, kinds=["llm.request"])]
    assert len(requests) == 500
    digests = {r["payload"]["request"]["system"][0]["$blob"] for r in requests}
    assert len(digests) == 1
    blobs, refs = _blob_rows(daemon.home)
    assert [sha for sha, _size in blobs] == list(digests)
    assert refs == [(sid, next(iter(digests)))]


def test_blobs_tags_and_rollups_work_on_postgresql(isolated_env, postgres_url) -> None:
    """On PostgreSQL too: a 100,000-character reply round-trips through a blob, tags filter sessions,
    roll-ups and cost across sessions read back, and the blob is stored once."""
    import uuid

    import sqlalchemy as sa

    from tests.conftest import DaemonProc, kill_runners

    schema = f"labd_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    daemon = DaemonProc(isolated_env, args=["--db", f"{postgres_url}?options=-csearch_path%3D{schema}"]).start()
    try:
        with daemon.client() as c:
            sids = [c.start("labd_fidelityflows:big_reply", params={"chars": 100_000}, tags={"db": "pg"})
                    for _ in range(2)]
            for sid in sids:
                assert c.wait(sid, timeout=60)["status"] == "completed"
            (resp,) = [e for e in c.history(sids[0], full=True) if e["kind"] == "llm.response"]
            assert resp["payload"]["content"] == big_text(100_000)
            assert {s["id"] for s in c.sessions(tags={"db": "pg"})} == set(sids)
            assert c.cost_summary(by="tag")["total"]["sessions"] == 2
            # the roll-up of the one LLM call onto the agent's node reads back as the cost summary has it
            nodes = c.dag(sids[0])["dag"]["nodes"]
            assert [(n["kind"], n["agent"], n["calls"]) for n in nodes] == [("agent", "writer", 1)], nodes
            assert {n["node_id"]: (n["calls"], n["cost"]) for n in nodes} == {
                r["node_id"]: (r["calls"], r["cost"]) for r in c.cost(sids[0])["by_node"]}
    finally:
        daemon.stop()
        kill_runners(isolated_env)
    with admin.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {schema}.blobs")).scalar() == 1
        assert conn.execute(sa.text(f"SELECT count(*) FROM {schema}.blob_refs")).scalar() == 2


def test_code_execution_output_is_recorded_whole(client) -> None:
    """A program printing 3,000 lines (~90 k characters): the model gets the tool result cut at 20,000
    characters, the ``code.execution`` record keeps every line (a blob, inlined by ``full``)."""
    sid = client.start("labd_fidelityflows:long_output", params={"lines": 3000})
    assert client.wait(sid, timeout=60)["status"] == "completed"
    events = list(client.history(sid, full=True))
    (execution,) = [e["payload"] for e in events if e["kind"] == "code.execution"]
    (result,) = [e["payload"] for e in events if e["kind"] == "tool.result"]
    assert execution["output"].splitlines() == [f"line {i:05d} " + "x" * 20 for i in range(3000)]
    assert len(result["result"]) < 20_100 and "more characters" in result["result"]
