"""The home's small files (``home-id``, ``store-mark``, ``store``) and the SQLite store's lock file, as an attacker
or a bad day leaves them (attack review): a symlink planted where the daemon writes, a FIFO or ``/dev/zero`` where
it reads, a damaged id, a password in the store URL's query. Each is a clear one-line refusal or is written around,
never a hang, a traceback, another file overwritten or a password shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from labd.daemon.store_identity import (
    HOME_ID,
    MARK,
    StoreMark,
    WrongStore,
    check_home,
    check_store,
    check_url,
    lock_store,
    record_store,
    shown_url,
    store_identity,
)
from labd.ipc.paths import UnusableHome, layout_for
from labd.store.urls import url_passwords as _db_passwords

pytestmark = pytest.mark.timeout(120)


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def test_writes_of_the_home_files_never_go_through_a_planted_symlink(tmp_path: Path) -> None:
    """``store-mark.tmp`` and ``store.tmp`` planted as symlinks to a victim file: the daemon's writes of the mark and
    of the store's record leave the victim as it was, and the files they write are regular files of their own."""
    home = _home(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for name in (MARK, "store"):
        (home / f"{name}.tmp").symlink_to(victim)
        (home / f".{name}.tmp").symlink_to(victim)
    StoreMark(home / MARK, 3).add(2)
    layout = layout_for(home)
    record_store(layout, f"sqlite:///{home / 'labd.db'}", lambda: False)
    assert victim.read_text() == "precious\n"
    assert not (home / MARK).is_symlink() and (home / MARK).read_text() == "5\n"
    assert not (home / "store").is_symlink() and (home / "store").read_text().startswith("sqlite:/")


def test_the_sqlite_lock_file_is_never_opened_through_a_symlink(tmp_path: Path) -> None:
    """Another user's symlink at ``<db>.labd-lock`` in a shared directory: the start is refused naming the link, and
    the file it points to is neither truncated nor written (it was, with the daemon's name)."""
    home = _home(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    db = tmp_path / "shared" / "labd.db"
    db.parent.mkdir()
    Path(f"{db}.labd-lock").symlink_to(victim)
    with pytest.raises(WrongStore, match="is a symbolic link"):
        lock_store(layout_for(home), f"sqlite:///{db}")
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("bad", ["fifo", "dev-zero", "directory", "huge", "not-utf8", "space", "short"])
def test_a_bad_home_id_is_a_one_line_refusal_naming_it(tmp_path: Path, bad: str) -> None:
    """``home-id`` as a FIFO (the start hung for good, holding the home's lock), a symlink to ``/dev/zero`` (read
    until memory ran out), a directory or undecodable bytes (tracebacks), a huge file, or an id with a space or too
    short (a space made every later start refused, naming the home as another): :class:`UnusableHome` naming it."""
    home = _home(tmp_path)
    path = home / HOME_ID
    if bad == "fifo":
        os.mkfifo(path)
    elif bad == "dev-zero":
        path.symlink_to("/dev/zero")
    elif bad == "directory":
        path.mkdir()
    elif bad == "huge":
        path.write_bytes(b"a" * (1 << 20))
    elif bad == "not-utf8":
        path.write_bytes(b"\xff\xfe" * 16)
    else:
        path.write_text("abc def\n" if bad == "space" else "abc123\n")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 's.db'}")
    with pytest.raises(UnusableHome, match=str(path)):
        check_home(layout_for(home), engine, f"sqlite:///{tmp_path / 's.db'}", set)
    engine.dispose()


def test_a_fifo_in_the_home_is_a_clear_error_from_serve_and_check(tmp_path: Path) -> None:
    """The whole command: ``labd serve --check`` and ``labd serve`` with a FIFO as ``store-mark`` exit 2 with one
    line naming it, at once (both hung with no output)."""
    import sqlite3

    home = _home(tmp_path)
    sqlite3.connect(home / "labd.db").close()  # a home's store exists (its checks read the mark)
    os.mkfifo(home / MARK)
    env = {**os.environ, "LABD_HOME": str(home)}
    env.pop("LABD_DB", None)
    for args in (["serve", "--check"], ["serve"]):
        out = subprocess.run([sys.executable, "-m", "labd", "--home", str(home), *args], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=90, env=env)
        assert out.returncode == 2, (args, out.stderr)
        assert f"cannot read {home / MARK}" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_password_in_the_urls_query_is_never_shown_nor_recorded_and_is_withheld() -> None:
    """``?password=`` (which the PostgreSQL drivers take as the password) is left out of what is shown (``labd
    status``, ``serve --check``, messages) and of the home's record of its store, and counts as a secret no session
    is given; other parameters stay."""
    url = "postgresql+psycopg://app@db.example:5433/labd?host=/run/pg&password=hunter2&sslpassword=s3&application_name=x"
    for shown in (shown_url(url), store_identity(url)):
        assert "hunter2" not in shown and "s3" not in shown and "app@" not in shown, shown
        assert "db.example:5433/labd" in shown and "application_name=x" in shown and "host=%2Frun%2Fpg" in shown
    assert {"hunter2", "s3"} <= _db_passwords(url)
    assert {"s@cret1", "s%40cret1"} <= _db_passwords("postgresql://h/db?PASS%57ORD=s%40cret1")  # both forms


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "postgresql://h:99999/db"])
def test_a_store_url_that_cannot_be_a_homes_record_is_refused_in_one_line(tmp_path: Path, url: str) -> None:
    """An in-memory SQLite store (a mistyped path: it was recorded as the home's store, and the real one refused
    after) or a port out of range (a traceback): :class:`UnusableHome` saying why; the home records nothing."""
    home = _home(tmp_path)
    with pytest.raises(UnusableHome, match="in memory|not valid"):
        check_url(url)
    with pytest.raises(UnusableHome):
        check_store(layout_for(home), url)
    assert not (home / "store").exists()


@pytest.mark.parametrize("name", ["labd.lock", "daemon.key"])
@pytest.mark.parametrize("bad", ["symlink", "fifo"])
def test_the_homes_lock_and_key_are_never_used_through_a_symlink_or_a_fifo(tmp_path: Path, name: str,
                                                                           bad: str) -> None:
    """``labd.lock`` or ``daemon.key`` as a symlink to a victim file, or a FIFO: `labd serve` exits 2 with one line
    naming it, at once, and the victim is as it was (the lock's target was truncated and given the pid, the key's
    overwritten with a new key; a FIFO as the key hung the start for good, as the lock a traceback)."""
    home = _home(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    if bad == "symlink":
        (home / name).symlink_to(victim)
    else:
        os.mkfifo(home / name)
    env = {k: v for k, v in os.environ.items() if k != "LABD_DB"}
    out = subprocess.run([sys.executable, "-m", "labd", "--home", str(home), "serve"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=90, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert name in out.stderr, out.stderr
    assert victim.read_text() == "precious\n"


def test_serve_check_does_not_hang_on_a_fifo_lock_file(tmp_path: Path) -> None:
    """A FIFO at the SQLite store's lock file: `labd serve --check` says what `serve` would (it hung)."""
    import sqlite3

    home = _home(tmp_path)
    sqlite3.connect(home / "labd.db").close()
    os.mkfifo(home / "labd.db.labd-lock")
    env = {k: v for k, v in os.environ.items() if k != "LABD_DB"}
    out = subprocess.run([sys.executable, "-m", "labd", "--home", str(home), "serve", "--check"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90, env=env)
    assert out.returncode == 2 and "labd.db.labd-lock is not a regular file" in out.stderr, out.stderr



@pytest.mark.parametrize("bad", ["fifo", "dev-zero"])
def test_a_client_command_with_no_daemon_and_a_bad_lock_file_says_so_at_once(tmp_path: Path, bad: str) -> None:
    """No daemon runs and ``labd.lock`` is a FIFO (every client command hung for good: `labd ps`, `labd run`,
    `labd serve --detach`) or a symlink to ``/dev/zero`` (read until memory ran out): `labd ps` exits 2 saying no
    daemon serves the home (retest of the attack fixes)."""
    home = _home(tmp_path)
    if bad == "fifo":
        os.mkfifo(home / "labd.lock")
    else:
        (home / "labd.lock").symlink_to("/dev/zero")
    env = {k: v for k, v in os.environ.items() if k != "LABD_DB"}
    out = subprocess.run([sys.executable, "-m", "labd", "--home", str(home), "ps"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "MemoryError" not in out.stderr, out.stderr


def test_serve_check_refuses_a_fifo_home_lock_in_a_new_home_as_serve_does(tmp_path: Path) -> None:
    """A brand-new home whose ``labd.lock`` is a FIFO: `serve --check` exits 2 as `serve` would (it said
    "configuration OK", and the start then failed)."""
    home = _home(tmp_path)
    os.mkfifo(home / "labd.lock")
    env = {k: v for k, v in os.environ.items() if k != "LABD_DB"}
    out = subprocess.run([sys.executable, "-m", "labd", "--home", str(home), "serve", "--check"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "labd.lock is not a regular file" in out.stderr, out.stderr


def test_a_password_inside_a_database_name_libpq_expands_is_never_shown_nor_recorded(tmp_path: Path) -> None:
    """libpq reads a database name holding ``=`` (the URL's path, or ``?dbname=``) as a connection string of its
    own, and uses the password in it: that password is left out of what is shown and recorded (the rest of the
    string stays, so two stores stay apart) and withheld from sessions, in a string or a nested URI. A home that
    recorded its store with that password in it (before) still serves, its record rewritten without it."""
    from urllib.parse import quote

    in_path = "postgresql+psycopg://db.example/" + quote("host=pg1 password='hun ter\\'2' port=5433", safe="")
    in_query = "postgresql://db.example/labd?dbname=host%3Dpg2%20password%3Dhunter3&application_name=x"
    nested = "postgresql://db.example/labd?dbname=postgresql%3A%2F%2Fu%3Ahunter4%40pg3%2Fdb"
    for url, secret, kept in ((in_path, "hun ter'2", "pg1"), (in_query, "hunter3", "pg2"), (nested, "hunter4", "pg3")):
        for shown in (shown_url(url), store_identity(url)):
            assert "hunter" not in shown and "hun%20ter" not in shown and "hun+ter" not in shown, shown
            assert kept in shown, shown
        assert secret in _db_passwords(url)
    assert store_identity(in_query) != store_identity(in_query.replace("pg2", "pg9"))  # other stores stay apart
    escaped = "postgresql://db.example/" + quote("host=pg4 password=SEC\\ RET", safe="")  # libpq's escape, unquoted
    assert "SEC RET" in _db_passwords(escaped) and "SEC" not in shown_url(escaped)
    home = _home(tmp_path)
    legacy = "postgresql://db.example/labd?dbname=host%3Dpg2+password%3Dhunter3&application_name=x"
    (home / "store").write_text(legacy + "\n")
    check_store(layout_for(home), in_query)
    record = (home / "store").read_text()
    assert record.strip() == store_identity(in_query) and "hunter3" not in record
