"""Retention: `session.rm` / `session.prune` delete whole ended sessions — record and directories — and
nothing else; the automatic policy; bounded growth of the database under run-prune cycles."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from labd.ipc.client import LabdError
from tests.conftest import running_daemon, wait_until

TABLES = ["events", "steps", "state_history", "dag_edges", "cost_records", "cost_sums", "files", "approvals"]


def _rows(home: Path, sid: str) -> dict[str, int]:
    with sqlite3.connect(home / "labd.db") as conn:
        out = {t: conn.execute(f"SELECT count(*) FROM {t} WHERE session_id = ?", (sid,)).fetchone()[0]
               for t in TABLES}
        out["sessions"] = conn.execute("SELECT count(*) FROM sessions WHERE id = ?", (sid,)).fetchone()[0]
    return out


def _finished(c, workflow: str = "demo.count", **params) -> str:
    sid = c.start(workflow, params=params)
    assert c.wait(sid, timeout=60)["status"] in ("completed", "failed")
    return sid


def test_rm_deletes_the_whole_record_and_directory_of_one_session(shared_daemon) -> None:
    """After `rm`, no table holds a row of the session and its directory is gone; another session is untouched."""
    from labd.ipc import LabdError

    daemon = shared_daemon

    with daemon.client() as c:
        gone = _finished(c, "one_shot", task="Say hi")  # an agent workflow: steps, costs, edges too
        kept = _finished(c, n=3)
        assert sum(_rows(daemon.home, gone).values()) > 10
        before_kept = _rows(daemon.home, kept)
        r = c.rm(gone)
        assert r["deleted"] == [gone] and r["rows"]["events"] > 0
        assert all(v == 0 for v in _rows(daemon.home, gone).values())
        assert _rows(daemon.home, kept) == before_kept
        wait_until(lambda: not (daemon.home / "sessions" / gone).exists(), timeout=10, what="directory removed")
        assert (daemon.home / "sessions" / kept).exists()
        with pytest.raises(LabdError) as err:
            c.session(gone)
        assert err.value.code == "not_found"
        assert c.session(kept)["status"] == "completed"


def test_rm_refuses_a_running_session_and_deletes_nothing_of_the_request(shared_daemon) -> None:
    """A live session cannot be deleted (clear error, `not_terminal`), and the ended session named beside it
    in the same request is kept too: a request is all or nothing."""
    from labd.ipc import LabdError

    daemon = shared_daemon

    with daemon.client() as c:
        done = _finished(c, n=1)
        live = c.start("demo.sleep", params={"seconds": 60})
        wait_until(lambda: c.session(live)["status"] == "running", timeout=30, what="running")
        with pytest.raises(LabdError) as err:
            c.rm(done, live)
        assert err.value.code == "not_terminal"
        assert _rows(daemon.home, done)["sessions"] == 1
        assert c.session(live)["status"] == "running"
        c.kill(live)


def test_prune_by_age_and_status_with_dry_run(daemon) -> None:
    """`prune --dry-run` lists without deleting; a status filter keeps other statuses; bad input is refused. (A
    daemon of its own: prune acts on every session, and it asserts on all it would delete.)"""
    from labd.ipc import LabdError

    with daemon.client() as c:
        ok = _finished(c, n=1)
        bad = _finished(c, "demo.fail")
        assert c.session(bad)["status"] == "failed"
        dry = c.prune(0, status=["failed"], dry_run=True)
        assert dry["would_delete"] == [bad] and _rows(daemon.home, bad)["sessions"] == 1
        assert c.prune("1d")["deleted"] == []  # nothing ended a day ago
        r = c.prune(0, status=["failed"])
        assert r["deleted"] == [bad]
        assert _rows(daemon.home, bad)["sessions"] == 0 and _rows(daemon.home, ok)["sessions"] == 1
        # an unhashable status item (a list, an object) is bad input too, not an internal error
        for bad_args in ({"older_than": "soon"}, {"older_than": 0, "status": ["running"]},
                         {"older_than": 0, "status": [[]]}, {"older_than": 0, "status": [{"a": 1}]}):
            with pytest.raises(LabdError) as err:
                c.request("session.prune", **bad_args)
            assert err.value.code == "bad_request"


def test_cli_rm_and_prune(shared_daemon) -> None:
    """The CLI commands print what they deleted and exit 0; `--json` has the stable reply shape."""
    daemon = shared_daemon
    with daemon.client() as c:
        a, b = _finished(c, n=1), _finished(c, n=1)
    env = {**os.environ, "LABD_HOME": str(daemon.home)}
    out = subprocess.run([sys.executable, "-m", "labd", "rm", a], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and "deleted 1 session" in out.stdout, out.stderr
    out = subprocess.run([sys.executable, "-m", "labd", "prune", "--older-than", "0s", "--dry-run"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and b in out.stdout
    out = subprocess.run([sys.executable, "-m", "labd", "rm", "nope-no-such"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 2 and "not_found" in out.stderr


def test_rm_by_a_name_several_sessions_share_is_refused_with_their_ids(shared_daemon) -> None:
    """`labd rm study` when three ended sessions are named study: refused (exit 2, ``ambiguous``) naming their
    ids, nothing deleted, the dry run refused the same way; by their ids all three go. It deleted the newest and
    said nothing of the others (a review). A name one session has still deletes it."""
    daemon = shared_daemon
    env = {**os.environ, "LABD_HOME": str(daemon.home)}
    name = f"study-{os.getpid()}"
    with daemon.client() as c:
        sids = [c.start("demo.count", params={"n": 1, "delay": 0}, name=name) for _ in range(3)]
        for sid in sids:
            assert c.wait(sid, timeout=60)["status"] == "completed"
        for extra in ([], ["--dry-run"]):
            out = subprocess.run([sys.executable, "-m", "labd", "rm", *extra, name], capture_output=True, text=True,
                                 env=env, timeout=60)
            assert out.returncode == 2 and "ambiguous" in out.stderr, out
            assert f"3 sessions are named {name!r}" in out.stderr and all(s in out.stderr for s in sids), out.stderr
        assert all(_rows(daemon.home, s)["sessions"] == 1 for s in sids)
        with pytest.raises(LabdError) as err:
            c.rm(name)
        assert err.value.code == "ambiguous" and sorted(err.value.details["matches"]) == sorted(sids)
        out = subprocess.run([sys.executable, "-m", "labd", "rm", *sids], capture_output=True, text=True, env=env,
                             timeout=60)
        assert out.returncode == 0 and "deleted 3 session" in out.stdout, out
        alone = c.start("demo.count", params={"n": 1, "delay": 0}, name=name + "-alone")
        c.wait(alone, timeout=60)
        assert c.rm(name + "-alone")["deleted"] == [alone]


def test_prune_with_a_bare_number_is_refused_and_deletes_nothing(shared_daemon) -> None:
    """`labd prune --older-than 30` (30d meant, the unit dropped) is refused, exit 2, naming the units, and deletes
    nothing; before, a bare number was seconds: every session that ended over 30 s ago was deleted at once. The
    same text over the protocol is refused; a number (seconds) is still taken. A dry run says its cutoff."""
    daemon = shared_daemon
    with daemon.client() as c:
        done = _finished(c, n=1)
        env = {**os.environ, "LABD_HOME": str(daemon.home)}
        for bare in ("0", "30", " 1.5 "):
            out = subprocess.run([sys.executable, "-m", "labd", "prune", "--older-than", bare], capture_output=True,
                                 text=True, env=env, timeout=60)
            assert out.returncode == 2 and "has no unit" in out.stderr and "30d" in out.stderr, out
            with pytest.raises(LabdError) as err:
                c.prune(bare)
            assert err.value.code == "bad_request"
        assert _rows(daemon.home, done)["sessions"] == 1
        assert done in c.prune(0, dry_run=True)["would_delete"]
        out = subprocess.run([sys.executable, "-m", "labd", "prune", "--older-than", "0s", "--dry-run"],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0 and "that ended before 20" in out.stdout and done in out.stdout, out


def test_cli_rm_dry_run_lists_and_deletes_nothing(shared_daemon) -> None:
    """`labd rm --dry-run` names the sessions the references resolve to (by id prefix or name), says which have not
    ended (rm refuses those; exit 2) and deletes nothing; without it, rm deletes at once (it had no dry run)."""
    daemon = shared_daemon
    with daemon.client() as c:
        done = _finished(c, n=1)
        running = c.start("demo.sleep", params={"seconds": 60})
        env = {**os.environ, "LABD_HOME": str(daemon.home)}
        out = subprocess.run([sys.executable, "-m", "labd", "rm", "--dry-run", done[:6]], capture_output=True,
                             text=True, env=env, timeout=60)
        assert out.returncode == 0 and "would delete 1 session" in out.stdout and done in out.stdout, out
        out = subprocess.run([sys.executable, "-m", "labd", "rm", "--dry-run", "--json", done, running],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 2 and json.loads(out.stdout) == {"would_delete": [done], "not_ended": [running]}
        assert c.session(done)["status"] == "completed" and _rows(daemon.home, done)["sessions"] == 1
        c.kill(running)


def test_retention_policy_prunes_old_sessions_automatically(isolated_env: Path) -> None:
    """`[daemon] retention = "1s"` deletes ended sessions on its own, only the configured statuses."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text('[daemon]\nretention = "1s"\nretention_statuses = ["completed"]\n')
    with running_daemon(isolated_env) as d, d.client() as c:
        ok = _finished(c, n=1)
        bad = _finished(c, "demo.fail")
        wait_until(lambda: _rows(d.home, ok)["sessions"] == 0, timeout=30, what="policy pruned the session")
        assert _rows(d.home, bad)["sessions"] == 1


def test_orphaned_session_directories_are_removed_at_start(isolated_env: Path) -> None:
    """A deletion interrupted by a crash (rows gone, directory left) is finished by the next daemon."""
    with running_daemon(isolated_env) as d, d.client() as c:  # the home in use: its store is its own
        kept = _finished(c, n=1)
    orphan = isolated_env / "sessions" / "0123456789ab"
    (orphan / "work").mkdir(parents=True)
    (orphan / "work" / "data.bin").write_bytes(b"x" * 1000)
    with running_daemon(isolated_env):
        wait_until(lambda: not orphan.exists(), timeout=10, what="orphan removed")
        assert (isolated_env / "sessions" / kept).is_dir()


def test_a_prune_matching_more_than_one_request_deletes_says_so(isolated_env: Path) -> None:
    """10,001 sessions that ended long ago: a prune (and its dry run) deletes (lists) 10,000 and says that more match
    (it said "deleted 10000 session(s)" and left the rest without a word); the next one deletes the last and says
    no more. The daemon's log says who deleted what (only the automatic policy did)."""
    from labd.daemon.api.retention import MAX_IDS

    with running_daemon(isolated_env) as d, d.client() as c:
        seed = _finished(c, n=1)
    with sqlite3.connect(isolated_env / "labd.db") as conn:  # the copies: rows only, ended 40 days ago
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("SELECT * FROM sessions WHERE id = ?", (seed,)).fetchone())
        old = row["ended_at"] - 40 * 86400
        rows = [{**row, "id": f"{i:032x}", "name": f"copy-{i}", "ended_at": old} for i in range(MAX_IDS)]
        cols = ", ".join(row)
        conn.executemany(f"INSERT INTO sessions ({cols}) VALUES ({', '.join(':' + k for k in row)})", rows)
        conn.execute("UPDATE sessions SET ended_at = ? WHERE id = ?", (old, seed))
    with running_daemon(isolated_env) as d, d.client(timeout=90) as c:  # 10,001 deletions on a loaded box: >15 s
        dry = c.prune("30d", dry_run=True)
        assert len(dry["would_delete"]) == MAX_IDS and dry["more"] is True
        first = c.prune("30d")
        assert len(first["deleted"]) == MAX_IDS and first["more"] is True
        last = c.prune("30d")
        assert len(last["deleted"]) == 1 and last["more"] is False
        logged = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
        assert [e["count"] for e in logged if e.get("event") == "deleting sessions" and e.get("by") == "client"] \
            == [MAX_IDS, 1]


def test_bad_config_retention_is_refused(isolated_env: Path) -> None:
    """A retention that is not a duration stops the daemon at start with a clear message."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text('[daemon]\nretention = "forever"\n')
    out = subprocess.run([sys.executable, "-m", "labd", "--home", str(isolated_env), "serve"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "forever" in out.stderr


def _db_bytes(home: Path) -> tuple[int, int]:
    """(size, bytes in use) of the database as its pages say, the WAL's newer pages included: the size the
    file has once the WAL is checkpointed. (The file's own size depends on when the daemon last checkpointed,
    which a loaded box moves: it once read 1.30x between two cycles of the same work.)"""
    with sqlite3.connect(home / "labd.db") as conn:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return pages * page, (pages - free) * page


@pytest.mark.slow
def test_run_prune_cycles_keep_the_database_bounded(daemon, tmp_path: Path) -> None:
    """60 sessions with output, steps and checkpoints (content-addressed objects of their work directories),
    pruned, then 60 more, pruned: the database does not keep growing (SQLite reuses freed pages), every
    session's rows are gone each time, and so are its checkpoint objects (the sessions directory is empty).
    (A daemon of its own: it prunes every session and measures the whole database.)"""
    sizes = []
    sessions_dir = daemon.home / "sessions"

    def tree_bytes(root: Path) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:  # being deleted meanwhile
                    pass
        return total

    with daemon.client(timeout=60) as c:
        for cycle in range(2):
            sids = []
            for batch in range(3):  # 60 sessions a cycle (200, then 100, took a minute and more of the suite)
                started = []
                for i in range(20):
                    if i % 2:
                        started.append(c.start("labd_testflows:ticker", params={"n": 20, "delay": 0}))
                    else:  # its own counter directory: sessions run concurrently
                        counter = tmp_path / f"c{cycle}-{batch}-{i}"
                        counter.mkdir()
                        started.append(c.start("labd_testflows:durable_four",
                                               params={"counter": str(counter), "fail_three": 0}))
                for sid in started:
                    assert c.wait(sid, timeout=120)["status"] == "completed"
                sids += started
            checkpoints = sum(len(c.checkpoints(sid)) for sid in sids[::2][:5])
            assert checkpoints == 5 * 4  # four steps, four checkpoints each
            before = tree_bytes(sessions_dir)
            r = c.prune(0)
            assert set(sids) <= set(r["deleted"])
            with sqlite3.connect(daemon.home / "labd.db") as conn:
                assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
            # directories go after the rows (the reply does not wait for the disk)
            wait_until(lambda: tree_bytes(sessions_dir) == 0, timeout=60, what="session directories deleted")
            print(f"cycle {cycle}: sessions directory {before} -> 0 bytes")
            assert before > 0
            sizes.append(_db_bytes(daemon.home))
    print(f"database bytes after each cycle: {sizes}")
    assert sizes[1][0] <= sizes[0][0] * 1.25  # freed pages are reused, the file does not keep growing
    assert sizes[1][1] <= sizes[0][1] * 1.25


def test_blobs_go_with_the_last_session_that_refers_to_them(daemon) -> None:
    """Two sessions share one big system prompt (one blob, two refs): deleting the first keeps the blob for the
    second; deleting the second removes it — no referenced blob is ever deleted, no orphan is left. (A daemon
    of its own: it counts every blob in the database.)"""
    def blob_count() -> int:
        with sqlite3.connect(daemon.home / "labd.db") as conn:
            return int(conn.execute("SELECT count(*) FROM blobs").fetchone()[0])

    with daemon.client() as c:
        a = c.start("labd_fidelityflows:shared_prompt", params={"calls": 3, "prompt_chars": 20_000})
        assert c.wait(a, timeout=90)["status"] == "completed"
        b = c.start("labd_fidelityflows:shared_prompt", params={"calls": 3, "prompt_chars": 20_000})
        assert c.wait(b, timeout=90)["status"] == "completed"
        shared = blob_count()
        assert shared >= 1
        assert c.rm(a)["rows"]["blobs"] == 0 and blob_count() == shared  # b still refers to them
        full = c.events(b, full=True)["events"]  # b's requests still read back whole
        assert any(len(str(e["payload"])) > 20_000 for e in full if e["kind"] == "llm.request")
        assert c.rm(b)["rows"]["blobs"] == shared and blob_count() == 0


def test_daemon_exits_cleanly_after_deleting_sessions(isolated_env: Path) -> None:
    """After an `rm`, stopping the daemon exits 0 with no traceback in its log (ingest's methods must not
    shadow threading.Thread's private ones, as a `_delete` once did)."""
    with running_daemon(isolated_env) as d:
        with d.client() as c:
            c.rm(_finished(c, n=1))
        assert d.stop() == 0
        assert "Traceback" not in d.log()


@pytest.mark.timeout(180)
def test_a_field_a_deleting_request_does_not_take_is_refused_and_nothing_is_deleted(daemon) -> None:
    """``session.prune`` with ``dryrun`` (for ``dry_run``) or ``statuses`` (for ``status``), ``session.rm`` with
    ``dryrun`` and ``skill.delete`` with ``version``: each is ``bad_request`` naming the
    field, and every session and skill version is still there. Each was ignored: the "dry run" deleted every ended
    session, ``statuses: ["failed"]`` deleted the completed ones too, and a one-version delete deleted them all."""
    from labd.ipc import LabdError

    with daemon.client() as c:
        done = _finished(c)
        c.request("skill.import", document={"name": "keep", "workflow": "demo.count"})
        c.request("skill.import", document={"name": "keep", "workflow": "demo.count"})
        for kind, body, field in [
                ("session.prune", {"older_than": "0s", "dryrun": True}, "dryrun"),
                ("session.prune", {"older_than": 0, "statuses": ["failed"]}, "statuses"),
                ("session.rm", {"sessions": [done], "dryrun": True}, "dryrun"),
                ("skill.delete", {"name": "keep", "version": 2}, "version")]:
            with pytest.raises(LabdError) as err:
                c.request(kind, **body)
            assert err.value.code == "bad_request" and repr(field) in err.value.message, (kind, err.value)
            assert err.value.details == {"field": field}
        assert c.session(done)["status"] == "completed" and _rows(daemon.home, done)["events"] > 0
        assert c.request("skill.get", name="keep")["skill"]["version"] == 2
        assert c.prune("0s", dry_run=True)["would_delete"] == [done]  # the fields it takes still work
        assert c.rm(done, dry_run=True)["would_delete"] == [done]
        assert c.prune("0s", status=["failed"])["deleted"] == []
        assert c.rm(done)["deleted"] == [done]
        assert c.request("skill.delete", name="keep")["versions"] == 2


def test_rm_gives_the_logs_space_back(daemon) -> None:
    """A deletion writes about as much SQLite log as the sessions held, and the log kept that size on disk (a 100 MB
    session's `rm` took the database's files from 102 to 203 MB, until the log passed 50,000 pages). After `rm` the
    log is truncated at the checkpointer's next round."""
    wal = daemon.home / "labd.db-wal"
    with daemon.client() as c:
        sid = _finished(c, "demo.events", n=100_000)
        c.rm(sid)
        assert _rows(daemon.home, sid)["sessions"] == 0
    wait_until(lambda: not wal.exists() or wal.stat().st_size < 1 << 20, timeout=30,
               what="the log truncated after the deletion")
