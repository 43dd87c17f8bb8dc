"""Shared fixtures: an isolated home per test, real daemons as subprocesses, wait-until helpers."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
SUPPORT = Path(__file__).resolve().parent / "support"


def wait_until(pred: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll ``pred`` until it returns something truthy; fail the test after ``timeout`` seconds (a deadline, not a
    goal: 10 s by default was too short for a runner's start on a loaded CI box)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        time.sleep(interval)


def runner_pid(c: Any, sid: str, timeout: float = 60.0) -> int:
    """Wait until session ``sid`` runs and its runner's pid is recorded; the pid. Both are needed: the runner's
    ``session.started`` may be stored before the daemon's ``session.launched`` (which carries the pid), so a session
    can be ``running`` with ``pid`` still None for a moment."""
    def ready() -> int | None:
        s = c.session(sid)
        return int(s["pid"]) if s["status"] == "running" and s["pid"] else None
    return wait_until(ready, timeout=timeout, what=f"session {sid} running with its runner's pid")  # type: ignore[no-any-return]


def alive(pid: int) -> bool:
    """Is process ``pid`` running (a zombie, or no such process, is not)?"""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Every test gets its own HOME, runtime dir (short path: Unix socket paths are limited) and labd home."""
    runtime = Path(tempfile.mkdtemp(prefix="lr", dir="/tmp"))
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("LABD_HOME", str(home))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SUPPORT), str(REPO)]))
    yield home
    subprocess.run(["rm", "-rf", str(runtime)], check=False)


class DaemonProc:
    """A real ``labd serve`` subprocess on a home."""

    def __init__(self, home: Path, extra_env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.home = home
        self.args = args or []
        self.env = {**os.environ, **(extra_env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home.parent / f"daemon-{int(time.time() * 1000)}.log"

    def start(self, wait: bool = True) -> DaemonProc:
        self.home.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "labd", "--home", str(self.home), "serve",
                                      "--log-format", "json", *self.args], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        from labd.ipc import Client, LabdError

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"daemon exited: {self.log()}"
            try:
                with Client(self.home, timeout=1.0) as c:
                    c.ping()
                return True
            except LabdError:
                return False

        wait_until(ready, timeout=60, interval=0.05, what="daemon ready")  # a deadline, not a goal: loaded CI

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, timeout: float = 15.0) -> Any:
        from labd.ipc import Client

        return Client(self.home, timeout=timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def kill_runners(home: Path) -> None:
    """Kill every runner process group recorded in the home's database that is still that runner (tests never
    leak runners). The recorded create time is checked: pids wrap (pid_max is 32768 here) and a module's
    shared daemon ends minutes after its first sessions, so a bare pid could be another test's live runner."""
    db = home / "labd.db"
    if not db.exists():
        return
    try:
        with sqlite3.connect(db) as conn:
            rows = list(conn.execute("SELECT id, pid, pid_create_time FROM sessions WHERE pid IS NOT NULL AND pid > 0"))
    except sqlite3.Error:
        return
    for sid, pid, ctime in rows:
        try:
            proc = psutil.Process(pid)
            if ctime is not None and abs(proc.create_time() - ctime) >= 0.05 \
                    and not " ".join(proc.cmdline()).endswith(f"#{sid}"):
                continue  # the pid was reused (a test may move a create time: the runner's title still names it)
            os.killpg(pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass


@contextmanager
def module_home(prefix: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """A temporary HOME, runtime dir and labd home for one module's shared daemon, set in the environment while
    it lasts: (base directory, the variables set). Removed afterwards."""
    import shutil

    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    runtime = base / "run"
    runtime.mkdir(mode=0o700)
    env = {"HOME": str(base), "XDG_RUNTIME_DIR": str(runtime), "LABD_HOME": str(base / "home"),
           "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)])}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            yield base, env
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def running_daemon(home: Path, **kwargs: Any) -> Iterator[DaemonProc]:
    """A started daemon on ``home``; stopped, and its runners killed, when the block ends."""
    d = DaemonProc(home, **kwargs).start()
    try:
        yield d
    finally:
        d.stop()
        kill_runners(home)


def next_daemon_adopts_and_stops(home: Path, sid: str, pid: int) -> None:
    """A new daemon on ``home`` finds session ``sid`` still running (its runner ``pid`` adopted) and stops it
    (``cancelled``); the daemon is stopped afterwards, and the runner killed if the test failed before its stop."""
    restarted = DaemonProc(home).start()
    try:
        with restarted.client() as c:
            assert c.session(sid)["status"] == "running"
            c.stop(sid, grace=1)
            assert c.wait(sid, timeout=30)["status"] == "cancelled"
    finally:
        restarted.stop()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # if the test failed: not minutes of a runner ticking after it


@pytest.fixture
def daemon(isolated_env: Path) -> Iterator[DaemonProc]:
    """A running daemon on the test's home; stopped, and its runners killed, afterwards."""
    with running_daemon(isolated_env) as d:
        yield d


@contextmanager
def module_daemon_on(request: pytest.FixtureRequest, config: str = "", args: list[str] | None = None
                     ) -> Iterator[DaemonProc]:
    """A daemon for a module's tests on a home of its own (``module_home``), with ``config.toml`` and ``labd serve``
    arguments if given."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    with module_home(f"lm{name[:6]}") as (base, env):
        if config:
            (base / "home").mkdir()
            (base / "home" / "config.toml").write_text(config)
        with running_daemon(base / "home", args=args) as d:
            d.test_env = env  # type: ignore[attr-defined]
            yield d


def pointed_at(d: DaemonProc, monkeypatch: pytest.MonkeyPatch) -> DaemonProc:
    """``d``, with HOME, XDG_RUNTIME_DIR, LABD_HOME and PYTHONPATH set over the test's ``isolated_env`` so that
    ``labd`` subprocesses and ``labd.Client()`` find it."""
    for k, v in d.test_env.items():  # type: ignore[attr-defined]
        monkeypatch.setenv(k, v)
    return d


@pytest.fixture(scope="module")
def module_daemon(request: pytest.FixtureRequest) -> Iterator[DaemonProc]:
    """One daemon shared by a module's tests, on a home of its own (``module_home``: its own HOME, runtime dir,
    labd home), for tests that start their own sessions and assert only on those. ``test_env`` holds the
    variables that point at it; tests that run ``labd`` subprocesses get them through ``shared_daemon``.
    Tests that assert on daemon-wide state (counters, every session, its log, its pid) use ``daemon``."""
    with module_daemon_on(request) as d:
        yield d


@pytest.fixture
def shared_daemon(module_daemon: DaemonProc, monkeypatch: pytest.MonkeyPatch) -> DaemonProc:
    """The module's shared daemon, pointed at (``pointed_at``)."""
    return pointed_at(module_daemon, monkeypatch)


SMALL_MAX_MESSAGE = 64 * 1024


@pytest.fixture
def small_daemon(isolated_env: Path) -> Iterator[DaemonProc]:
    """A daemon with a 64 KiB message limit, so oversized frames are cheap to produce."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text(f"[daemon]\nmax_message = {SMALL_MAX_MESSAGE}\n")
    with running_daemon(isolated_env) as d:
        yield d


@pytest.fixture(scope="module")
def module_small_daemon(request: pytest.FixtureRequest) -> Iterator[DaemonProc]:
    """``module_daemon`` with ``small_daemon``'s 64 KiB message limit."""
    with module_daemon_on(request, f"[daemon]\nmax_message = {SMALL_MAX_MESSAGE}\n") as d:
        yield d


@pytest.fixture
def shared_small_daemon(module_small_daemon: DaemonProc, monkeypatch: pytest.MonkeyPatch) -> DaemonProc:
    """The module's shared small daemon, pointed at (``pointed_at``)."""
    return pointed_at(module_small_daemon, monkeypatch)


@pytest.fixture
def client(daemon: DaemonProc) -> Iterator[Any]:
    c = daemon.client()
    try:
        yield c
    finally:
        c.close()


class PostgresServer:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) on a free loopback port.

    scripts/test installs the server when it is missing; as root it runs as the ``postgres`` user,
    because PostgreSQL refuses to run as root.
    """

    def __init__(self) -> None:
        import shutil
        import socket

        initdb, self.pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
        if not (initdb and self.pg_ctl):
            for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin")):
                initdb, self.pg_ctl = str(candidate / "initdb"), str(candidate / "pg_ctl")
        assert initdb and Path(initdb).exists(), "PostgreSQL server binaries not found (scripts/test installs them)"
        self.base = Path(tempfile.mkdtemp(prefix="labd-pg-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            os.chown(self.base, *_uid_gid("postgres"))
            # runuser lives in /usr/sbin, which a minimal PATH lacks (a fresh clone's suite under `env -i`)
            runuser = shutil.which("runuser", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
            self.as_user = [runuser or "runuser", "-u", "postgres", "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.data = self.base / "data"
        subprocess.run([*self.as_user, initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres"], check=True,
                       capture_output=True)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        subprocess.run([*self.as_user, str(self.pg_ctl), "-D", str(self.data), "-l", str(self.base / "log"), "-w",
                        "-o", f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*self.as_user, str(self.pg_ctl), "-D", str(self.data), "-m", mode, "-w", "stop"],
                       capture_output=True)

    def destroy(self) -> None:
        import shutil

        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A fresh schema on the shared PostgreSQL server (dropped after): the URL of a store in it, for ``--db``."""
    import uuid

    import sqlalchemy as sa

    schema = f"labd_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        try:
            yield f"{postgres_url}?options=-csearch_path%3D{schema}"
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server shared by the tests of a run."""
    server = PostgresServer()
    server.start()
    try:
        yield server.url
    finally:
        server.destroy()


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own (it may stop and start it)."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


def _uid_gid(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item (fixtures use it to save screenshots of failed tests)."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
