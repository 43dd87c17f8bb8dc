"""PostgreSQL enforces ``VARCHAR(n)`` lengths, SQLite does not: a label longer than its column was refused by a
PostgreSQL store (``event.rejected``, DataError, the fact missing from the record) though every SQLite test passed.
Labels a workflow chooses (step names up to ``MAX_STEP_NAME``, agents, models, tools, statuses, an approval's decision,
who answered it) are ``text`` since migration 0010; node ids stay keys of 64 characters, and ingest refuses a longer
one with a reason that says so (not the store's DataError)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from labd.store.schema import MODEL_KEY_MAX, model_key
from tests.conftest import DaemonProc, kill_runners, pg_schema

_FLOW = """\
import labd


def labels(ctx):
    with ctx.step("s" * 500):  # under MAX_STEP_NAME (1000): the runner keeps it whole
        pass
    ctx._emit("cost.recorded", {"agent": "a" * 150, "model": "m" * 300, "prompt_tokens": 1, "completion_tokens": 1,
                                "cost": 0.0, "currency": "USD", "offline": True}, None)
    for model in ("M" * 5000 + "1", "M" * 5000 + "2"):  # past what an index entry holds, alike for 5,000 characters
        ctx._emit("cost.recorded", {"agent": "a", "model": model, "prompt_tokens": 2, "completion_tokens": 1,
                                    "cost": 0.5, "currency": "USD", "offline": True}, None)
    ctx._emit("file.created", {"path": "x.txt", "sha256": "0" * 64, "size": 1, "kind": "k" * 30, "agent": "a" * 150,
                               "tool": "t" * 150}, None)
    ctx._emit("step.started", {"name": "forged", "kind": "phase-of-a-long-kind-name", "edges": [["n1", "e" * 30]]},
              "nf1")
    ctx._emit("step.finished", {"name": "forged", "status": "finished-with-a-long-status", "duration": 0.0}, "nf1")
    decision = ctx.approval("go", "proceed?", options=["continue with the second plan, please"])
    return decision.decision


def forged_nodes(ctx):
    ctx._emit("custom", {"name": "long node"}, "n" * 100)
    ctx._emit("step.started", {"name": "long node"}, "n" * 100)
    ctx._emit("step.started", {"name": "long parent", "parent_node": "p" * 100}, "nf2")
    ctx._emit("step.started", {"name": "long edge", "edges": [["q" * 100, "sequence"]]}, "nf3")
    ctx._emit("file.created", {"path": "y.txt", "sha256": "f" * 100, "size": 1, "kind": "output"}, None)
    ctx._emit("custom", {"name": "after"}, "n9")
    return "done"
"""


@pytest.fixture
def pg(isolated_env: object, postgres_url: str, tmp_path: Path) -> Iterator[tuple[DaemonProc, str]]:
    """A daemon on a fresh PostgreSQL schema (dropped after), and the schema's URL."""
    with pg_schema(postgres_url) as url:
        (tmp_path / "lengths_flow.py").write_text(_FLOW)
        daemon = DaemonProc(isolated_env, args=["--db", url]).start()
        try:
            yield daemon, url
        finally:
            daemon.stop()
            kill_runners(isolated_env)


def _rows(url: str, sql: str, sid: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), {"s": sid})]
    finally:
        engine.dispose()


def test_long_labels_are_recorded_in_postgresql(pg: tuple[DaemonProc, str], tmp_path: Path) -> None:
    """On PostgreSQL, a 500-character step name, a cost record's 150-character agent and 300-character model, a file's
    30-character kind and 150-character agent and tool, a step's long kind, status and edge type, an approval answered
    with a 37-character option by a 60-character name: all recorded (no event refused by the store, no failed
    request), as on SQLite."""
    daemon, url = pg
    with daemon.client() as c:
        sid = c.start(f"{tmp_path / 'lengths_flow.py'}:labels")
        deadline = time.monotonic() + 60
        while not c.approvals(sid):
            assert time.monotonic() < deadline, c.history(sid, kinds=["event.rejected"])
            time.sleep(0.1)
        c.resolve(sid, "continue with the second plan, please", by="b" * 60)
        final = c.wait(sid, timeout=60)
        rejected = [e["payload"] for e in c.history(sid, kinds=["event.rejected"])]
        assert rejected == [], rejected
        assert final["status"] == "completed", final
    names = {r[0] for r in _rows(url, "SELECT name FROM steps WHERE session_id = :s", sid)}
    assert "s" * 500 in names
    assert _rows(url, "SELECT agent, model FROM cost_records WHERE session_id = :s ORDER BY seq", sid) == [
        ("a" * 150, "m" * 300), ("a", "M" * 5000 + "1"), ("a", "M" * 5000 + "2")]
    # cost.summary's sums keep the long names apart (cut, with a digest of the whole name)
    with daemon.client() as c:
        mine = {g["model"]: (g["calls"], g["cost"]) for g in c.cost_summary(by="model")["groups"]}
    assert {k: mine.get(k) for k in map(model_key, ("m" * 300, "M" * 5000 + "1", "M" * 5000 + "2"))} == {
        model_key("m" * 300): (1, 0.0), model_key("M" * 5000 + "1"): (1, 0.5), model_key("M" * 5000 + "2"): (1, 0.5)}
    assert all(len(m) <= MODEL_KEY_MAX for m in mine)
    assert _rows(url, "SELECT kind, agent, tool FROM files WHERE session_id = :s AND path = 'x.txt'", sid) == [
        ("k" * 30, "a" * 150, "t" * 150)]
    assert _rows(url, "SELECT kind, status FROM steps WHERE session_id = :s AND node_id = 'nf1'", sid) == [
        ("phase-of-a-long-kind-name", "finished-with-a-long-status")]
    assert _rows(url, "SELECT type FROM dag_edges WHERE session_id = :s AND dst = 'nf1'", sid) == [("e" * 30,)]
    assert _rows(url, "SELECT decision, resolved_by FROM approvals WHERE session_id = :s", sid) == [
        ("continue with the second plan, please", "b" * 60)]
    assert ("b" * 60,) in _rows(url, "SELECT actor FROM state_history WHERE session_id = :s", sid)


def test_forged_long_node_ids_are_refused_with_a_reason(pg: tuple[DaemonProc, str], tmp_path: Path) -> None:
    """On PostgreSQL, events a session forges with a node id over 64 characters (its own, a step's parent, an edge's
    source) or a file's sha256 over 64 are refused by ingest with a reason naming the bound, not by the store
    (DataError); the session's other events are recorded and it completes."""
    daemon, _url = pg
    with daemon.client() as c:
        sid = c.start(f"{tmp_path / 'lengths_flow.py'}:forged_nodes")
        final = c.wait(sid, timeout=60)
        reasons = [e["payload"]["reason"] for e in c.history(sid, kinds=["event.rejected"])]
        customs = [e["payload"]["name"] for e in c.history(sid, kinds=["custom"])]
    assert final["status"] == "completed", final
    assert len(reasons) == 5, reasons
    assert not any("DataError" in r for r in reasons), reasons
    assert sum("node_id must be at most 64 characters" in r for r in reasons) == 2, reasons
    assert any("parent_node must be at most 64 characters" in r for r in reasons), reasons
    assert any("edge's source node must be at most 64 characters" in r for r in reasons), reasons
    assert any("sha256 must be at most 64 characters" in r for r in reasons), reasons
    assert customs == ["after"], customs
