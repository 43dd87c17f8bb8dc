"""`labd serve` that cannot start says why in one line, with no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest


def _ended_and_running(c: Any) -> tuple[str, str, int]:
    """A session run to its end, and one left running (``running``: its runner said hello); their ids and the running
    one's runner pid."""
    from tests.conftest import runner_pid

    done = c.start("demo.count", params={"n": 1, "delay": 0})
    c.wait(done, timeout=60)
    live = c.start("demo.sleep")
    return done, live, runner_pid(c, live)


def _templates_of(home: Path) -> list[int]:
    """Runner template processes of the daemon of ``home`` (the template inherits its ``LABD_HOME``)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "labd.runner.template" in " ".join(p.info["cmdline"] or []) \
                    and p.environ().get("LABD_HOME") == str(home):
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def test_a_ray_launcher_without_ray_installed_is_a_clear_error(isolated_env: Path, tmp_path: Path) -> None:
    """[launcher] naming a Ray cluster on a machine without Ray: `labd serve` exits 2 and tells how to install it
    (before: a LaunchError traceback, "No module named 'ray'")."""
    shadow = tmp_path / "noray"
    (shadow / "ray").mkdir(parents=True)
    (shadow / "ray" / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text('[launcher]\naddress = "auto"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), os.environ["PYTHONPATH"]])}
    out = subprocess.run([sys.executable, "-m", "labd", "serve"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "Ray is not installed: pip install 'labd[ray]'" in out.stderr


def test_a_database_in_a_missing_directory_is_a_clear_error(isolated_env: Path, tmp_path: Path) -> None:
    """`labd serve --db sqlite:////missing/dir/x.db` exits 2 with one line naming the missing directory (before:
    a FileNotFoundError traceback from opening the file), and leaves no runner template behind."""
    missing = tmp_path / "no" / "such" / "dir"
    err = tmp_path / "stderr"
    with err.open("wb") as f:  # a file, not a pipe: its end would wait for every process that inherited it
        rc = subprocess.run([sys.executable, "-m", "labd", "serve", "--db", f"sqlite:///{missing}/x.db"],
                            stdout=subprocess.DEVNULL, stderr=f, timeout=120).returncode
    # the runner template, spawned before the database is opened (daemon/startup.py), ended with the daemon: it is
    # not left importing the runner stack (nor does it print a traceback when it finds the daemon gone)
    assert _templates_of(isolated_env) == []
    stderr = err.read_text()
    assert rc == 2, stderr
    assert "Traceback" not in stderr
    assert f"the directory {missing} does not exist" in stderr
    assert not missing.exists()


def test_serve_detach_beside_a_running_daemon_says_so_and_leaves_its_log_alone(daemon, isolated_env: Path) -> None:
    """A second `labd serve --detach` for a home already served answers at once with the running daemon's pid
    (exit 0), starts nothing and writes nothing into that daemon's log; asking for other options (--db) is refused
    (exit 2) with how to change them. Before: a second daemon was spawned, failed on the home's lock, and its error
    came after fifteen unrelated lines of the running daemon's log, which it also wrote into."""
    log = isolated_env / "daemon.log"
    log.touch()
    before = log.read_bytes()
    out = subprocess.run([sys.executable, "-m", "labd", "serve", "--detach"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"labd daemon pid {daemon.proc.pid} already serving {isolated_env}" in out.stdout
    other = subprocess.run([sys.executable, "-m", "labd", "serve", "--detach", "--db",
                            f"sqlite:///{isolated_env}/other.db"], capture_output=True, text=True, timeout=120)
    assert other.returncode == 2
    assert f"a daemon (pid {daemon.proc.pid}) is already serving" in other.stderr and "labd shutdown" in other.stderr
    assert log.read_bytes() == before
    assert not (isolated_env / "other.db").exists()


def test_a_labd_folder_where_the_user_stands_does_not_shadow_the_package(isolated_env: Path, tmp_path: Path) -> None:
    """`labd serve --detach` run in a directory holding a folder named `labd` (a checkout, or LABD_HOME=./labd)
    starts its daemon and runner template (before: `python -m labd` imported the empty folder and failed with
    "module 'labd' has no attribute '__version__'"); sessions then run."""
    work = tmp_path / "work"
    (work / "labd").mkdir(parents=True)
    # labd as installed (the venv's editable finder comes after the path search), not from the tests' PYTHONPATH
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    labd = [sys.executable, "-P", "-m", "labd"]  # -P: as the `labd` script, which puts no cwd on sys.path
    r = subprocess.run([*labd, "serve", "--detach"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    try:
        run = subprocess.run([*labd, "run", "demo.count", "-p", "n=1", "-p", "delay=0", "-f"],
                             cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "count 1/1" in run.stdout, run.stderr
    finally:
        subprocess.run([*labd, "shutdown"], env=env, capture_output=True, timeout=120)


def test_a_home_on_a_read_only_filesystem_is_a_clear_error(tmp_path: Path) -> None:
    """`labd serve` on a home whose filesystem is mounted read-only (a disk remounted read-only after errors) exits 2
    with one line naming the home and the reason; it was an OSError traceback (exit 1) from making the home private.
    Needs root to mount one (skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only filesystem needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        (disk / "home" / "sessions").mkdir(parents=True)  # a home labd had made and used
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        out = subprocess.run([sys.executable, "-m", "labd", "--home", str(disk / "home"), "serve"],
                             capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert f"cannot use {disk / 'home'} as labd's home: Read-only file system" in out.stderr, out.stderr


def test_a_daemon_on_another_store_refuses_the_home_and_touches_nothing(isolated_env: Path, tmp_path: Path) -> None:
    """A home used with one store, then started once with another (`--db` given by mistake, a misspelt SQLite path
    that would create an empty database): `labd serve` exits 2 naming both stores, and the home's session
    directories and running sessions are untouched; so too on a home of an older labd (no record of its store) given
    an empty store. Before, that one start deleted every session directory and killed the running sessions (lost)."""
    from tests.conftest import DaemonProc, kill_runners, wait_until

    other = tmp_path / "other.db"

    def serve_other() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "labd", "serve", "--db", f"sqlite:///{other}"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)

    d = DaemonProc(isolated_env).start()
    try:
        with d.client() as c:
            done = c.start("demo.count", params={"n": 1})
            c.wait(done, timeout=60)
            live = c.start("demo.sleep")
            pid = wait_until(lambda: c.session(live)["pid"], timeout=60, what="the runner")
            # running, not still starting (a pid is known before the runner's start is recorded: a CI run adopted
            # a session still `starting`)
            wait_until(lambda: c.session(live)["status"] == "running", timeout=60, what="the session running")
        d.stop()  # sessions keep running without a daemon
        dirs = sorted(p.name for p in (isolated_env / "sessions").iterdir())
        assert {done, live} <= set(dirs)
        out = serve_other()
        assert out.returncode == 2, out.stderr
        assert "keeps the sessions of the store sqlite:" in out.stderr and str(other) in out.stderr
        assert "Traceback" not in out.stderr
        for name in ("store", "store-mark", "home-id"):  # as a home of a labd before the store was recorded
            (isolated_env / name).unlink()
        out = serve_other()
        assert out.returncode == 2, out.stderr
        assert "session directories, but the store" in out.stderr and "records no session" in out.stderr
        assert sorted(p.name for p in (isolated_env / "sessions").iterdir()) == dirs
        assert psutil.pid_exists(pid)
        d = DaemonProc(isolated_env).start()  # the home's own store: the session is adopted, still running
        with d.client() as c:
            wait_until(lambda: c.session(live)["status"] == "running", timeout=60, what="the session adopted")
            assert c.session(done)["status"] == "completed"
            c.kill(live)
        assert (isolated_env / "store").read_text().strip() == f"sqlite:{os.path.realpath(isolated_env / 'labd.db')}"
    finally:
        d.stop()
        kill_runners(isolated_env)


def test_a_store_of_another_home_or_restored_from_a_backup_is_refused(isolated_env: Path, tmp_path: Path) -> None:
    """A store remembers whose record it is, and how many sessions it ever recorded (admin review). Another home
    given this home's database exits 2 naming the home it belongs to (it adopted that home's runners, which kept
    talking to their own home: their output was lost). The same store restored from a backup taken before the
    latest sessions exits 2 saying it is older than the home, naming the session directories it does not know
    (that start removed them and killed their runners, taking them for deleted). Neither start touches a session
    directory or a runner, nor claims anything; with the newer store back, the running session is adopted."""
    import shutil

    from tests.conftest import DaemonProc, kill_runners

    db = isolated_env / "labd.db"

    def copy_db(to: Path) -> None:
        to.mkdir(parents=True, exist_ok=True)
        for f in db.parent.glob("labd.db*"):
            if not f.name.endswith("labd-lock"):
                shutil.copy2(f, to / f.name)

    def put_db(frm: Path) -> None:
        for f in db.parent.glob("labd.db-*"):
            if not f.name.endswith("labd-lock"):
                f.unlink()
        for f in frm.iterdir():
            shutil.copy2(f, db.parent / f.name)

    d = DaemonProc(isolated_env).start()
    try:
        with d.client() as c:
            c.wait(c.start("demo.count", params={"n": 1, "delay": 0}), timeout=60)
        d.stop()
        copy_db(tmp_path / "backup")
        d = DaemonProc(isolated_env).start()
        with d.client() as c:
            later, live, pid = _ended_and_running(c)
        d.stop()  # sessions keep running without a daemon
        dirs = sorted(p.name for p in (isolated_env / "sessions").iterdir())
        other = tmp_path / "other-home"
        out = subprocess.run([sys.executable, "-m", "labd", "--home", str(other), "serve", "--db", f"sqlite:///{db}"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        assert f"is the record of the home {isolated_env}" in out.stderr and "Traceback" not in out.stderr
        assert not (other / "store").exists()  # the refused home did not take this store for its own
        check = subprocess.run([sys.executable, "-m", "labd", "--home", str(other), "serve", "--check", "--db",
                                f"sqlite:///{db}"], capture_output=True, text=True, timeout=120)
        assert check.returncode == 2 and f"is the record of the home {isolated_env}" in check.stderr, check
        copy_db(tmp_path / "newer")
        put_db(tmp_path / "backup")
        out = subprocess.run([sys.executable, "-m", "labd", "serve"], stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        assert "is older than this home: it recorded 1 sessions, and this home's daemons saw it record 3" in out.stderr
        assert "the 2 session directories it does not know" in out.stderr and later in out.stderr and live in out.stderr
        check = subprocess.run([sys.executable, "-m", "labd", "serve", "--check"], capture_output=True, text=True,
                               timeout=120)
        assert check.returncode == 2 and "is older than this home" in check.stderr, check  # it said OK
        # a backup of a labd before store_meta: refused the same way, and left as it was (not migrated first)
        import sqlalchemy as sa

        from labd.store.db import downgrade

        old = sa.create_engine(f"sqlite:///{db}")
        downgrade(old, "0014_skill_names")
        out = subprocess.run([sys.executable, "-m", "labd", "serve"], stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 2 and "it recorded 1 sessions" in out.stderr, out.stderr
        with old.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0014_skill_names"
        old.dispose()
        assert sorted(p.name for p in (isolated_env / "sessions").iterdir()) == dirs
        assert psutil.pid_exists(pid)
        put_db(tmp_path / "newer")
        d = DaemonProc(isolated_env).start()
        with d.client() as c:
            assert c.session(live)["status"] == "running" and c.session(later)["status"] == "completed"
            c.kill(live)
    finally:
        d.stop()
        kill_runners(isolated_env)


def test_a_preload_that_fails_to_import_does_not_keep_the_daemon_from_serving(isolated_env: Path,
                                                                                tmp_path: Path) -> None:
    """A ``preload`` module that is installed but raises when imported: the template says so in the daemon's log and
    serves (it died at every start, was started again ~40 times a minute, and the daemon never served)."""
    from tests.conftest import running_daemon

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "broken_preload.py").write_text("raise RuntimeError('this module is broken')\n")
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text('[daemon]\npreload = ["broken_preload"]\n')
    path = os.pathsep.join([str(mods), os.environ.get("PYTHONPATH", "")])
    with running_daemon(isolated_env, extra_env={"PYTHONPATH": path}) as d, d.client() as c:
        sid = c.start("demo.count", params={"n": 1})
        assert c.wait(sid, timeout=60)["status"] == "completed"
        assert "preload 'broken_preload' not imported: RuntimeError: this module is broken" in d.log()


def test_a_second_daemon_on_the_same_sqlite_store_is_refused(isolated_env: Path, tmp_path: Path) -> None:
    """Another home given this home's SQLite database (`--db`) while its daemon runs: `labd serve` exits 2 naming
    the daemon that writes it (the two daemons adopted each other's runners and dropped events as duplicates), and
    the running daemon's sessions go on. Once it has stopped, the store is still that home's record: the other home
    is refused naming it (admin review: it started, adopted the first home's runners and lost their output)."""
    from tests.conftest import running_daemon

    db = f"sqlite:///{isolated_env / 'labd.db'}"
    other_home = tmp_path / "other-home"
    with running_daemon(isolated_env) as d, d.client() as c:
        out = subprocess.run([sys.executable, "-m", "labd", "--home", str(other_home), "serve", "--db", db],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        assert f"is written by the labd daemon of home {isolated_env} (pid {d.proc.pid})" in out.stderr, out.stderr
        # `serve --check` of the running daemon's own home (an edited config.toml): fine, its lock is its own
        check = subprocess.run([sys.executable, "-m", "labd", "serve", "--check"], capture_output=True, text=True,
                               timeout=120)
        assert check.returncode == 0 and "configuration OK" in check.stdout, check
        sid = c.start("demo.count", params={"n": 2})
        assert c.wait(sid, timeout=60)["status"] == "completed"
    out = subprocess.run([sys.executable, "-m", "labd", "--home", str(other_home), "serve", "--db", db],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert f"is the record of the home {isolated_env}" in out.stderr, out.stderr
    with running_daemon(isolated_env) as d, d.client() as c:  # its own home serves it as before
        assert any(s["id"] == sid for s in c.sessions(status=["completed"]))


def test_a_moved_sqlite_home_serves_and_a_copied_one_is_refused(isolated_env: Path, tmp_path: Path) -> None:
    """A SQLite home moved elsewhere (`mv`, its `labd.db` inside it) serves its sessions from its new place: before,
    it was refused, as its record of its store named the file's old path (admin review). A copy of a home (`cp -a`:
    same home id) while the original is still there is refused naming the original, even once the copy's record of
    its store is deleted as the first refusal suggests: before, the copy was taken for the same home and adopted the
    original's runners, which go on reporting to the original. The refused copy touches no runner."""
    import shutil

    from tests.conftest import DaemonProc, kill_runners, wait_until

    home = tmp_path / "a"
    d = DaemonProc(home).start()
    try:
        with d.client() as c:
            done, live, pid = _ended_and_running(c)
        d.stop()
        copy = tmp_path / "copy"
        shutil.copytree(home, copy, symlinks=True, ignore=shutil.ignore_patterns("*.sock", "labd.lock"))

        def serve(h: Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "labd", "--home", str(h), "serve"],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)

        out = serve(copy)  # its record names the original's file, which is still there
        assert out.returncode == 2 and "keeps the sessions of the store sqlite:" in out.stderr, out.stderr
        (copy / "store").unlink()
        out = serve(copy)
        assert out.returncode == 2, out.stderr
        assert f"this home is a copy of {home}" in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert psutil.pid_exists(pid) and not (copy / "store").exists()
        d = DaemonProc(home).start()  # the original serves on, its running session adopted
        with d.client() as c:
            wait_until(lambda: c.session(live)["status"] == "running", timeout=60, what="the session adopted")
            c.kill(live)
            c.wait(live, timeout=60)
        d.stop()
        shutil.rmtree(copy)
        moved = tmp_path / "moved"
        home.rename(moved)
        d = DaemonProc(moved).start()
        with d.client() as c:
            assert c.session(done)["status"] == "completed" and c.session(live)["status"] == "cancelled"
            again = c.start("demo.count", params={"n": 1, "delay": 0})
            assert c.wait(again, timeout=60)["status"] == "completed"
        assert (moved / "store").read_text().strip() == f"sqlite:{os.path.realpath(moved / 'labd.db')}"
    finally:
        d.stop()
        kill_runners(home if home.exists() else tmp_path / "moved")
