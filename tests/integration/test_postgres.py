"""PostgreSQL as the store (``labd serve --db postgresql+psycopg://...``), against a real server."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from tests.conftest import DaemonProc, kill_runners


def test_sessions_and_agent_tracking_persist_in_postgresql(isolated_env, postgres_url) -> None:
    """With --db pointing at PostgreSQL, migrations apply, a plain session and an agent workflow are
    recorded (events gap-free, projections, costs, files), and a restarted daemon reads them back."""
    schema = f"labd_{uuid.uuid4().hex[:8]}"  # one database per test run, isolated by schema
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    daemon = DaemonProc(isolated_env, args=["--db", url]).start()
    try:
        with daemon.client() as c:
            plain = c.start("demo.count", params={"n": 3, "delay": 0})
            agents = c.start("planning_and_control", params={"max_steps": 2})
            for sid in (plain, agents):
                assert c.wait(sid, timeout=60)["status"] == "completed"
            seqs = [e["seq"] for e in c.history(agents)]
            assert seqs == list(range(1, len(seqs) + 1))
            cost = c.cost(agents)["total"]
            assert cost["calls"] > 0 and cost["cost"] > 0
            assert any(f["path"].startswith("step_") for f in c.files(agents))
    finally:
        daemon.stop()
        kill_runners(isolated_env)
    with admin.connect() as conn:
        n = conn.execute(sa.text(f"SELECT count(*) FROM {schema}.events WHERE session_id = :s"), {"s": plain}).scalar()
        last = conn.execute(sa.text(f"SELECT last_seq FROM {schema}.sessions WHERE id = :s"), {"s": plain}).scalar()
        assert n == last >= 8
        assert not (isolated_env / "labd.db").exists()  # nothing went to SQLite
    restarted = DaemonProc(isolated_env, args=["--db", url]).start()
    try:
        with restarted.client() as c:
            assert c.session(plain)["status"] == "completed"
            assert [e["payload"]["text"] for e in c.history(plain, kinds=["output"])] == \
                ["count 1/3\n", "count 2/3\n", "count 3/3\n"]
    finally:
        restarted.stop()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
