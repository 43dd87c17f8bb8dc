"""PostgreSQL as the store (``labd serve --db postgresql+psycopg://...``), against a real server."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from labd.ipc import LabdError
from tests.conftest import DaemonProc, kill_runners


def _fresh_schema(postgres_url: str) -> tuple[sa.Engine, str, str]:
    """(an admin engine, a new schema, the daemon's URL on it): one database per test run, isolated by schema."""
    schema = f"labd_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    return admin, schema, f"{postgres_url}?options=-csearch_path%3D{schema}"


def test_sessions_and_agent_tracking_persist_in_postgresql(isolated_env, postgres_url) -> None:
    """With --db pointing at PostgreSQL, migrations apply, a plain session and an agent workflow are
    recorded (events gap-free, projections, costs, files), and a restarted daemon reads them back."""
    admin, schema, url = _fresh_schema(postgres_url)
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
            # the reads of a long session's newest part, on PostgreSQL too (SQL of their own: sums, IN lists)
            assert c.cost(agents, calls=False)["total"] == cost
            nodes = c.dag(agents)["dag"]["nodes"]
            assert c.dag(agents, newest=2)["dag"]["nodes"] == nodes[-2:]
            files = c.files(agents)
            assert c.files(agents, since=files[-1]["seq"] - 1) == files[-1:]
            # cost.summary's sums per session and model (its own GROUP BY), each grouping as the session's costs
            by_model = {m["model"]: m for m in c.cost(agents, calls=False)["by_model"]}
            for by, keys in (("model", set(by_model)), ("workflow", {"planning_and_control"}),
                             ("session", {agents}), ("tag", {"(untagged)"}), ("day", None)):
                summary = c.cost_summary(by=by)
                groups = {g[by]: g for g in summary["groups"]}
                assert keys is None or groups.keys() == keys, by
                assert sum(g["calls"] for g in groups.values()) == cost["calls"], by
                assert sum(g["cost"] for g in groups.values()) == pytest.approx(cost["cost"]), by
                assert summary["total"]["sessions"] == 1, by  # the plain session made no LLM call
            assert all(g["calls"] == by_model[g["model"]]["calls"] for g in c.cost_summary()["groups"])
            # a node of an old record without start_seq is the oldest, as on SQLite (PostgreSQL sorts NULLs last)
            with admin.begin() as conn:
                conn.execute(sa.text(f"UPDATE {schema}.steps SET start_seq = NULL WHERE session_id = :s "
                                     "AND node_id = :n"), {"s": agents, "n": nodes[-1]["node_id"]})
            assert [n["node_id"] for n in c.dag(agents)["dag"]["nodes"]][0] == nodes[-1]["node_id"]
            summed = {by: c.cost_summary(by=by) for by in ("model", "day")}
    finally:
        daemon.stop()
        kill_runners(isolated_env)
    with admin.connect() as conn:
        n = conn.execute(sa.text(f"SELECT count(*) FROM {schema}.events WHERE session_id = :s"), {"s": plain}).scalar()
        last = conn.execute(sa.text(f"SELECT last_seq FROM {schema}.sessions WHERE id = :s"), {"s": plain}).scalar()
        assert n == last >= 8
        assert not (isolated_env / "labd.db").exists()  # nothing went to SQLite
    # a store of the labd before cost_sums: the restarted daemon's migration sums its calls (PostgreSQL's own SQL)
    from labd.store.db import downgrade

    back = sa.create_engine(url)
    downgrade(back, "0011_record_counts")
    with back.connect() as conn:
        assert not sa.inspect(conn).has_table("cost_sums")
    back.dispose()
    restarted = DaemonProc(isolated_env, args=["--db", url]).start()
    try:
        with restarted.client() as c:
            for by, before in summed.items():  # the same sums, to the float addition order
                again = c.cost_summary(by=by)
                assert [{**g, "cost": pytest.approx(g["cost"])} for g in before["groups"]] == again["groups"], by
            assert c.session(plain)["status"] == "completed"
            assert [e["payload"]["text"] for e in c.history(plain, kinds=["output"])] == \
                ["count 1/3\n", "count 2/3\n", "count 3/3\n"]
    finally:
        restarted.stop()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def test_database_outage_is_waited_out_without_losing_events(isolated_env, postgres_server) -> None:
    """The PostgreSQL server stops while a session runs: the daemon waits for it (runners hold their
    events), a read meanwhile is refused ``store_unavailable`` (it was "internal error" and the driver's raw message:
    admin review) while a client waiting for the session waits through it, and when it is back the session finishes
    with every event stored once."""
    from tests.conftest import wait_until

    daemon = DaemonProc(isolated_env, args=["--db", postgres_server.url]).start()
    try:
        with daemon.client() as c:
            sid = c.start("labd_testflows:ticker", params={"n": 60, "delay": 0.05})
            wait_until(lambda: len(list(c.history(sid, kinds=["custom"]))) >= 5, what="first ticks")
            postgres_server.stop()
            down_until = time.monotonic() + 2.0  # keep it down for a while
            # a read meanwhile is refused as the store's absence, not as an "internal error" with the driver's text
            with pytest.raises(LabdError) as refused:
                c.sessions()
            assert refused.value.code == "store_unavailable", refused.value
            assert "the store cannot be reached just now" in str(refused.value), refused.value
            # a client that starts waiting for the session meanwhile waits through it (`labd run --wait`, `labd logs
            # -f` and result() gave up with store_unavailable on a 3 s restart: admin retest)
            waited: dict[str, object] = {}

            def wait_for_it() -> None:
                try:
                    with daemon.client() as other:
                        waited["row"] = other.wait(sid, timeout=90)
                except Exception as exc:  # noqa: BLE001 - the test says which
                    waited["error"] = exc

            waiter = threading.Thread(target=wait_for_it)
            waiter.start()
            wait_until(lambda: time.monotonic() > down_until, timeout=5, interval=0.1)
            postgres_server.start()
            final = c.wait(sid, timeout=90)
            assert final["status"] == "completed", final["reason"]
            waiter.join(90)
            assert "error" not in waited and waited["row"]["status"] == "completed", waited  # type: ignore[index]
            events = list(c.history(sid))
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            assert [e["payload"]["data"]["i"] for e in events if e["kind"] == "custom"] == list(range(60))
            assert c.status()["counters"].get("store_unavailable", 0) >= 1
            assert daemon.proc.poll() is None
    finally:
        daemon.stop()
        kill_runners(isolated_env)


def test_a_session_started_after_a_database_restart_is_recorded(isolated_env, postgres_server) -> None:
    """The PostgreSQL server restarts while the daemon is idle (its writer's connection dies unseen): the next
    session started is recorded and runs to the end, every event stored, and nothing is dropped. Before, the first
    statement on the dead connection left it refusing every later one ("Can't reconnect until invalid transaction is
    rolled back"): every session started afterwards was dropped, for good, while ``daemon.status`` said healthy
    (admin review)."""
    from tests.conftest import wait_until

    daemon = DaemonProc(isolated_env, args=["--db", postgres_server.url]).start()
    try:
        with daemon.client(timeout=60) as c:
            assert c.wait(c.start("demo.count", params={"n": 2, "delay": 0}), timeout=60)["status"] == "completed"
            sleeper = c.start("demo.sleep", params={"seconds": 300})
            wait_until(lambda: c.session(sleeper)["status"] == "running", timeout=60, what="the sleeper running")
            postgres_server.stop()
            # the daemon learns it from its store lock's connection (an idle daemon's first sign) or from a failed
            # commit (the sleeper's own events can get there first: CI saw that order): either way status says so and
            # a start is refused (it was accepted, run unrecorded, and its client timed out: admin retest)
            store = wait_until(lambda: (st := c.status()["store"]) and not st["writable"] and st["lock_held"] is False
                               and st, timeout=30, interval=0.2, what="the store reported down and its lock lost")
            assert store["error"], store
            with pytest.raises(LabdError) as refused:
                c.start("demo.count", params={"n": 1})
            assert refused.value.code == "store_unavailable", refused.value
            # a running session can still be killed by its id: the daemon holds its runner (it was refused, as the
            # store could not be read to find it)
            assert c.kill(sleeper)["killing"] is True
            postgres_server.start()
            assert c.wait(sleeper, timeout=60)["status"] == "cancelled"
            sid = wait_until(lambda: _started_or_none(c), timeout=60, interval=0.5, what="a start accepted")
            final = c.wait(sid, timeout=60)
            assert final["status"] == "completed", final["reason"]
            assert [e["payload"]["text"] for e in c.history(sid, kinds=["output"])] == ["count 1/3\n", "count 2/3\n",
                                                                                        "count 3/3\n"]
            events = list(c.history(sid))
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            counters = c.status()["counters"]
            assert not {k: v for k, v in counters.items() if k.startswith("dropped.")}, counters
            # a deletion as the first thing after another restart: refused or done, never the daemon's end (its
            # read of the sessions on the dead connection killed the ingest thread, and the daemon stopped)
            postgres_server.stop()
            postgres_server.start()
            wait_until(lambda: _removed(c, sid), timeout=60, interval=0.5, what="the session deleted")
            assert daemon.proc.poll() is None and c.ping()
            assert sid not in {s["id"] for s in c.sessions(limit=1000)}
    finally:
        daemon.stop()
        kill_runners(isolated_env)


def test_an_idle_daemon_learns_of_a_stopped_server_from_its_lock(isolated_env, postgres_server) -> None:
    """With no session running (nothing to commit, so no write can fail), the daemon still learns the PostgreSQL
    server is gone, from the connection holding its store lock: status says the store cannot be written and why,
    and a start is refused naming it (it was accepted, run unrecorded, and its client timed out: admin retest).
    Once the server is back, the lock is held again and starts are accepted."""
    from tests.conftest import wait_until

    daemon = DaemonProc(isolated_env, args=["--db", postgres_server.url]).start()
    try:
        with daemon.client(timeout=60) as c:
            assert c.wait(c.start("demo.count", params={"n": 1, "delay": 0}), timeout=60)["status"] == "completed"
            postgres_server.stop()
            store = wait_until(lambda: (st := c.status()["store"]) and not st["writable"] and st, timeout=30,
                               interval=0.2, what="the store reported down")
            assert store["lock_held"] is False and "the database server does not answer" in store["error"], store
            with pytest.raises(LabdError) as refused:
                c.start("demo.count", params={"n": 1})
            assert refused.value.code == "store_unavailable" and "does not answer" in str(refused.value)
            postgres_server.start()
            wait_until(lambda: c.status()["store"].get("lock_held") is True, timeout=60, interval=0.5,
                       what="the lock held again")
            sid = wait_until(lambda: _started_or_none(c), timeout=60, interval=0.5, what="a start accepted")
            assert c.wait(sid, timeout=60)["status"] == "completed"
    finally:
        daemon.stop()
        kill_runners(isolated_env)


def _removed(c: object, sid: str) -> bool:
    """Delete ``sid``: True once done, False while the store is refused as unreachable (any other error raises)."""
    try:
        c.rm(sid)  # type: ignore[attr-defined]
    except LabdError as exc:
        if exc.code != "store_unavailable":
            raise
        return False
    return True


def _started_or_none(c: object) -> str | None:
    """A new three-line session's id, or None while the daemon refuses starts (its store still reconnecting)."""
    from labd.ipc import LabdError

    try:
        return c.start("demo.count", params={"n": 3, "delay": 0})  # type: ignore[attr-defined, no-any-return]
    except LabdError:
        return None


def test_a_second_daemon_on_the_same_postgresql_schema_is_refused(isolated_env, postgres_url, tmp_path) -> None:
    """Another home given the same PostgreSQL database and schema while a daemon writes it: `labd serve` exits 2
    saying another daemon writes the store (the two adopted each other's runners and dropped events as
    duplicates). Once the first has stopped (its connection, and so its advisory lock, gone), the store is still the
    first home's record: the other home is refused naming it, and the first serves it again."""
    import subprocess
    import sys

    admin, _, url = _fresh_schema(postgres_url)
    first = DaemonProc(isolated_env, args=["--db", url]).start()
    try:
        out = subprocess.run([sys.executable, "-m", "labd", "--home", str(tmp_path / "other"), "serve", "--db", url],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        assert "is written by another labd daemon" in out.stderr and "Traceback" not in out.stderr
        # `serve --check` of the running daemon's own home (its edited config): fine; of the other home: refused
        check = subprocess.run([sys.executable, "-m", "labd", "--home", str(isolated_env), "serve", "--check", "--db",
                                url], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        assert check.returncode == 0 and "configuration OK" in check.stdout, check
        check = subprocess.run([sys.executable, "-m", "labd", "--home", str(tmp_path / "other"), "serve", "--check",
                                "--db", url], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        assert check.returncode == 2 and f"is the record of the home {isolated_env}" in check.stderr, check
        with first.client() as c:
            assert c.ping()
    finally:
        first.stop()
    out = subprocess.run([sys.executable, "-m", "labd", "--home", str(tmp_path / "other"), "serve", "--db", url],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert f"is the record of the home {isolated_env}" in out.stderr, out.stderr
    again = DaemonProc(isolated_env, args=["--db", url]).start()
    try:
        with again.client() as c:
            assert c.ping()
    finally:
        again.stop()
        admin.dispose()


def _lock_key(admin: sa.Engine, schema: str) -> tuple[int, int]:
    """(classid, objid) under which pg_locks shows the advisory lock of the store in ``schema``."""
    with admin.connect() as conn:
        key = conn.execute(sa.text("SELECT hashtext('labd store ' || current_database() || '.' || :s)"),
                           {"s": schema}).scalar()
    return (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF


def _lock_holder(admin: sa.Engine, schema: str) -> int | None:
    """The backend pid holding the store's advisory lock, if any."""
    classid, objid = _lock_key(admin, schema)
    with admin.connect() as conn:
        return conn.execute(sa.text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                                    "classid::bigint = :c AND objid::bigint = :o AND objsubid = 1"),
                            {"c": classid, "o": objid}).scalar()


def test_the_store_lock_is_taken_again_after_its_connection_is_lost(isolated_env, postgres_url, tmp_path) -> None:
    """The connection holding the store's lock ends (a server restart or a network cut does this; here its backend is
    terminated): the daemon takes the lock again on a new connection, says so in ``daemon.status``, and a second
    daemon started afterwards is still refused. Before, the lock was taken at start only: after an outage a second
    daemon on the store started, and the two adopted each other's runners."""
    import subprocess
    import sys

    from tests.conftest import wait_until

    admin, schema, url = _fresh_schema(postgres_url)
    first = DaemonProc(isolated_env, args=["--db", url]).start()
    try:
        old = _lock_holder(admin, schema)
        assert old is not None
        with admin.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": old}).scalar()
        wait_until(lambda: _lock_holder(admin, schema) not in (None, old), timeout=60, what="the lock taken again")
        with first.client() as c:
            assert wait_until(lambda: c.status()["store"].get("lock_held"), timeout=30, what="lock_held in status")
        out = subprocess.run([sys.executable, "-m", "labd", "--home", str(tmp_path / "other"), "serve", "--db", url],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and "is written by another labd daemon" in out.stderr, out.stderr
        assert first.proc.poll() is None
    finally:
        first.stop()
        admin.dispose()


def test_a_daemon_whose_store_lock_another_took_stops(isolated_env, postgres_url) -> None:
    """If another process takes the store's lock while the daemon's connection is gone (a second daemon started
    during an outage), the daemon stops, saying why, rather than write the store beside it; its sessions keep
    running for the daemon that holds the store."""
    from tests.conftest import wait_until

    admin, schema, url = _fresh_schema(postgres_url)
    first = DaemonProc(isolated_env, args=["--db", url]).start()
    thief = admin.connect()
    try:
        old = _lock_holder(admin, schema)
        classid, objid = _lock_key(admin, schema)
        key = (classid << 32 | objid) - (1 << 64 if classid >> 31 else 0)  # back to the signed bigint
        # the other waits in the lock's queue first, so it, not the daemon's next try, gets the lock when it is freed
        waiting = threading.Thread(target=lambda: thief.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key}))
        waiting.start()
        with admin.connect() as conn:
            wait_until(lambda: conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                                                    "NOT granted")).scalar(), timeout=30, what="the other waiting")
            conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": old})
        waiting.join(30)
        assert _lock_holder(admin, schema) not in (None, old)
        assert wait_until(lambda: first.proc.poll() is not None, timeout=60, what="the daemon stopping")
        assert first.proc.returncode != 0
        assert "another daemon took the store's lock" in first.log()
    finally:
        thief.close()
        first.stop()
        kill_runners(isolated_env)
        admin.dispose()
