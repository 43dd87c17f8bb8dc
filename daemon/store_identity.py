"""Which store a home's sessions are recorded in, so that a daemon started on another one refuses to start.

A home's session directories (work directories, checkpoints, spools) belong to the sessions of one store. A daemon
treats what its store does not know as gone: it removes the directories of sessions the store has no row for (a
deletion a crash interrupted: daemon/retention.py) and stops runners of sessions never recorded (daemon/orphans.py).
Started once on another database (`labd serve --db ...` on an existing home, a misspelt SQLite path that creates an
empty one, a service unit without the `--db` the home was used with), it deleted every session directory of the
home and killed its running sessions (admin review, 2026-12-06). So the home remembers its store in
``<home>/store`` (the URL without user or password; a SQLite file by its real path), written at the first start,
and a daemon given another store stops before it touches anything, saying what to do.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from labd.ipc.paths import Layout, UnusableHome
from labd.ipc.safe_files import read_regular, write_atomic
from labd.store.meta import HOME, SESSIONS_CREATED, read_meta, sessions_created, set_home
from labd.store.urls import shown_url

__all__ = ["WrongStore", "HomeClaim", "StoreMark", "check_home", "check_now", "check_store", "check_url",
           "lock_holder", "lock_store", "record_store", "session_ids_of", "shown_url", "store_identity"]

FILE = "store"
HOME_ID = "home-id"  # this home's id (random, made at its first start): the store records whose record it is
MARK = "store-mark"  # how many sessions this home's daemons saw the store insert


class WrongStore(UnusableHome):
    """The home's sessions are recorded in another store than the one this daemon was given."""


def store_identity(db_url: str) -> str:
    """The store ``db_url`` names, without credentials: ``sqlite:`` and the file's real path, else
    ``scheme://host:port/database?query`` (its credential parameters left out)."""
    if db_url.startswith("sqlite:"):
        path = db_url.split(":///", 1)[1] if ":///" in db_url else ""
        return f"sqlite:{os.path.realpath(path.split('?', 1)[0])}" if path else db_url
    return shown_url(db_url)


def check_url(db_url: str) -> None:
    """Refuse (:class:`UnusableHome`) a store URL that cannot be a home's record: an in-memory SQLite database
    (``sqlite://``, ``sqlite:///``: a mistyped path, recorded as the home's store, after which the real one was
    refused), or a port out of range (a traceback)."""
    if db_url.startswith("sqlite:"):
        path = db_url.split(":///", 1)[1] if ":///" in db_url else ""
        if path.split("?", 1)[0] in ("", ":memory:") or "mode=memory" in path:
            raise UnusableHome(f"the database {db_url} is in memory: it would lose every session at the daemon's "
                               "exit. Give a file: sqlite:////absolute/path/labd.db")
        return
    try:
        urlsplit(db_url).port  # noqa: B018 - parsed for its error
    except ValueError as exc:
        raise UnusableHome(f"the database URL {shown_url(db_url)} is not valid: {exc}") from None


def check_store(layout: Layout, db_url: str) -> None:
    """Refuse (:class:`WrongStore`) a store other than the one the home recorded (:func:`record_store`)."""
    check_url(db_url)
    path: Path = layout.home / FILE
    recorded = _read_small(path)
    if recorded is None:
        return
    mine = store_identity(db_url)
    if recorded and recorded != mine and _moved_with_home(layout, recorded, mine):
        _write(path, mine + "\n")  # the home was moved, its SQLite file with it (check_home checks it is its own)
        return
    if recorded and recorded != mine and not recorded.startswith("sqlite:") and shown_url(recorded) == mine:
        # recorded before a password inside the database name was left out (a connection string libpq expands):
        # the same store; the record is rewritten without that password
        _write(path, mine + "\n")
        return
    if recorded and recorded != mine:
        raise WrongStore(
            f"home {layout.home} keeps the sessions of the store {recorded}, not of {mine}: a daemon on another store "
            "would take the home's sessions for deleted ones (remove their directories, stop their runners). Give "
            f"this store a home of its own (--home), or, if the database was moved there, write its new place in "
            f"{path} (or delete that file)")


def _moved_with_home(layout: Layout, recorded: str, mine: str) -> bool:
    """Was the home moved, the SQLite file it keeps inside it with it? The recorded file is gone and the one given,
    of the same name, lies in this home: the absolute path recorded made every moved SQLite home refused (admin
    review). Whose record that file is, check_home then says (the store records its home's id)."""
    if not (recorded.startswith("sqlite:/") and mine.startswith("sqlite:/")):
        return False
    old, new = Path(recorded.removeprefix("sqlite:")), Path(mine.removeprefix("sqlite:"))
    return (old.name == new.name and not os.path.lexists(old) and new.is_file()
            and new.parent == Path(os.path.realpath(layout.home)))


def record_store(layout: Layout, db_url: str, knows_sessions: Callable[[], bool]) -> None:
    """Record the store of a home that has none yet (a new one, or one of a labd before 2026-12-06), once the daemon
    has opened the store: not before, so that a store that cannot be opened (a misspelt path) never becomes the
    home's. A home with session directories given a store that records no session at all is refused
    (:class:`WrongStore`): the same mistake, made on the first start after an upgrade."""
    path: Path = layout.home / FILE
    if path.exists():
        return
    sessions = layout.sessions_dir
    found = sum(1 for p in sessions.iterdir() if p.is_dir()) if sessions.is_dir() else 0
    if found and not knows_sessions():
        raise WrongStore(
            f"home {layout.home} has {found} session directories, but the store {store_identity(db_url)} records no "
            "session: a daemon on it would take them for deleted ones (remove them, stop their runners). Start it "
            f"on the home's store, give this store a home of its own (--home), or remove {sessions} if those "
            "sessions are no longer wanted")
    _write(path, store_identity(db_url) + "\n")


def _write(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` (:func:`~labd.ipc.safe_files.write_atomic`: a fixed ``.tmp`` name was written
    through whatever symlink someone who can write the home put there: attack review)."""
    write_atomic(path, text.encode("utf-8"), 0o644)


def _read_small(path: Path) -> str | None:
    """A small text file of the home (``home-id``, ``store-mark``): None if missing; a FIFO, a device, a directory,
    a huge or undecodable file is :class:`UnusableHome` naming it (a FIFO hung the start for good, holding the
    home's lock; ``/dev/zero`` grew the daemon until memory ran out: attack review)."""
    try:
        return read_regular(path, 4096).decode("utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UnusableHome(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc} (remove it if it is "
                           "damaged: it is remade)") from None


def _valid_id(path: Path, found: str) -> str:
    if found and not re.fullmatch(r"[0-9a-f]{32}", found):
        raise UnusableHome(f"{path} is damaged (a home id is 32 hexadecimal digits): restore it, or remove it if the "
                           "home's store is a new one")
    return found


def _home_id(layout: Layout) -> str:
    path = layout.home / HOME_ID
    found = _valid_id(path, _read_small(path) or "")
    if found:
        return found
    made = uuid.uuid4().hex
    _write(path, made + "\n")
    return made


class StoreMark:
    """``<home>/store-mark``: the sessions this home's daemons saw the store insert, written after each commit that
    inserted some (:attr:`labd.store.writer.BatchWriter.on_created`, on ingest's thread)."""

    def __init__(self, path: Path, count: int) -> None:
        self.path, self.count = path, count
        _write(path, f"{count}\n")

    def add(self, n: int) -> None:
        self.count += n
        try:
            _write(self.path, f"{self.count}\n")
        except OSError:  # a full disk: the mark lags, which only weakens the check (never refuses wrongly)
            pass


def _facts(bind: Any) -> tuple[dict[str, tuple[str | None, int | None]], int]:
    """The store's ``store_meta`` (empty for a store of a labd before it: not migrated yet, as checks run before the
    migrations, or a new one) and how many sessions it holds (what the migration counts as ever created)."""
    from sqlalchemy import Connection, func, inspect, select

    from labd.store.schema import sessions

    def read(conn: Any) -> tuple[dict[str, tuple[str | None, int | None]], int]:
        tables = inspect(conn)
        if tables.has_table("store_meta"):
            return read_meta(conn), 0
        if tables.has_table("sessions"):
            return {}, int(conn.execute(select(func.count()).select_from(sessions)).scalar() or 0)
        return {}, 0

    if isinstance(bind, Connection):
        return read(bind)
    with bind.connect() as conn:
        return read(conn)


def session_ids_of(bind: Any) -> set[str]:
    """Every session id the store holds (none for a new store), before its migrations; through an engine, or on a
    connection (``labd serve --check``'s)."""
    from sqlalchemy import Connection, inspect, select

    from labd.store.schema import sessions

    def read(conn: Any) -> set[str]:
        return {r[0] for r in conn.execute(select(sessions.c.id))} if inspect(conn).has_table("sessions") else set()

    if isinstance(bind, Connection):
        return read(bind)
    with bind.connect() as conn:
        return read(conn)


class HomeClaim:
    """What :func:`check_home` found acceptable, written by :meth:`commit` once every check of the start passed (a
    start refused for another reason claims nothing)."""

    def __init__(self, layout: Layout, engine: Any, owner: str, created: int) -> None:
        self.layout, self.engine, self.owner, self.created = layout, engine, owner, created

    def commit(self) -> StoreMark:
        """Record this home as the store's (new, or moved: its id moves with it); the home's mark, kept up to date."""
        mine = f"{_home_id(self.layout)} {self.layout.home}"
        if self.owner != mine:
            set_home(self.engine, mine)
        return StoreMark(self.layout.home / MARK, sessions_created(self.engine))  # as migrated


def check_home(layout: Layout, engine: Any, db_url: str, session_ids: Callable[[], set[str]]) -> HomeClaim:
    """Refuse (:class:`WrongStore`) a store that is the record of another home, or that went back in time (it has
    recorded fewer sessions than this home saw it insert: a backup restored, or an older copy). Either way the
    daemon would take what the store does not know for deleted: remove the home's session directories it has no
    row for, stop their runners, adopt another home's runners and lose their output (admin review). A store of no
    home yet (new, or of a labd before 2026-12-06) becomes this home's when the claim is committed. Writes
    nothing."""
    path = layout.home / HOME_ID
    # a new home (or one of a labd before 2026-12-06): given an id when it claims the store
    mine = _valid_id(path, _read_small(path) or "")
    meta, stored = _facts(engine)
    owner = (meta.get(HOME) or (None, None))[0] or ""
    owner_id, _, owner_path = owner.partition(" ")
    ident = store_identity(db_url)
    if owner_id and owner_id == mine and owner_path != str(layout.home) and _same_home(owner_path, owner_id):
        raise WrongStore(
            f"this home is a copy of {owner_path} (both are home {owner_id}), whose store {ident} this is: a daemon "
            f"here would adopt the runners of {owner_path}'s sessions, which report to that home. Serve the store "
            f"from {owner_path}; to move the home here, remove {owner_path} first; to keep the copy as a home of its "
            f"own, give it a database of its own and delete {path}")
    if owner_id and owner_id != mine and not (not mine and owner_path == str(layout.home)):  # (its id file lost)
        raise WrongStore(
            f"the store {ident} is the record of the home {owner_path} (id {owner_id}), not of {layout.home}: a "
            "daemon of this home would take that home's sessions for its own (adopt its runners, lose their output). "
            f"Give this home a database of its own, or serve the store from {owner_path}")
    created = int((meta.get(SESSIONS_CREATED) or (None, stored))[1] or 0)
    path = layout.home / MARK
    try:
        seen: int | None = int(_read_small(path) or "")
    except ValueError:
        seen = None  # (a damaged mark only weakens the check)
    if seen is not None and created < seen:
        sessions = layout.sessions_dir
        known = session_ids()
        unknown = sorted(p.name for p in sessions.iterdir() if p.is_dir() and p.name not in known) \
            if sessions.is_dir() else []
        raise WrongStore(
            f"the store {ident} is older than this home: it recorded {created} sessions, and this home's daemons saw "
            f"it record {seen} (restored from a backup, or an older copy?). A daemon on it would take the "
            f"{len(unknown)} session directories it does not know for deleted ones (remove them, kill their "
            f"runners){': ' + ', '.join(unknown[:10]) + (' ...' if len(unknown) > 10 else '') if unknown else ''}. "
            f"Serve the newer store; or, to go on with this one, stop those sessions' runners if they still run "
            f"(`pkill -f ' #<id>$'`: nothing would record or supervise them), move their directories out of "
            f"{sessions} and delete {path}")
    return HomeClaim(layout, engine, owner, created)


def _same_home(place: str, home_id: str) -> bool:
    """Is ``place`` a home of id ``home_id`` (the home this one was copied from, still there)?"""
    try:
        return read_regular(os.path.join(place, HOME_ID), 256).decode("utf-8", "replace").strip() == home_id
    except OSError:
        return False


def check_now(layout: Layout, db_url: str, conn: Any) -> None:
    """``labd serve --check``'s look at an existing store, on its read-only connection ``conn``: what a start would
    refuse (:class:`WrongStore`) -- another home's store, an older one than the home saw, one that another daemon
    writes now. It said "configuration OK" for each, and the start then failed (admin review). Changes nothing."""
    from sqlalchemy import text

    check_home(layout, conn, db_url, lambda: session_ids_of(conn))
    if lock_holder(str(layout.home / "labd.lock")) is not None:
        return  # this home's own daemon runs: the store's lock is its own (a check of its edited config is the point)
    identity = store_identity(db_url)
    if identity.startswith("sqlite:/"):
        holder = lock_holder(identity.removeprefix("sqlite:") + ".labd-lock")
        if holder is not None:
            raise WrongStore(f"the store {identity} is written by {holder} now: one daemon writes a store")
    elif conn.dialect.name == "postgresql":
        got = conn.execute(text(PG_LOCK_SQL.format("pg_try_advisory_lock"))).scalar()
        if got:
            conn.execute(text(PG_LOCK_SQL.format("pg_advisory_unlock")))
        else:
            raise WrongStore(f"the store {identity} is written by another labd daemon now: one daemon writes a store")


#: the advisory lock a daemon holds on its PostgreSQL store (daemon/store_lock.py takes it with the same key)
PG_LOCK_SQL = "SELECT {}(hashtext('labd store ' || current_database() || '.' || coalesce(current_schema(), '')))"


def lock_holder(path: str) -> str | None:
    """Who holds a lock file now (its text), or None; read only. A lock file a start would refuse (a symlink, not a
    regular file of this user: :func:`lock_store`) is :class:`WrongStore` here too, and a FIFO there no longer
    hangs ``labd serve --check`` (attack retest)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise WrongStore(f"{path} is a symbolic link: a lock file must be a file of its own (remove the link)"
                             ) from None
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise WrongStore(f"{path} is not a regular file of this user: a lock file must be (remove it)")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another labd daemon"
    finally:
        os.close(fd)  # releases a lock it took
    return None


def lock_store(layout: Layout, db_url: str) -> int | None:
    """For a SQLite store, hold ``<database>.labd-lock`` (flock) for as long as the daemon runs and return its file
    descriptor: a second daemon on the same file (another home given it with ``--db``) is refused
    (:class:`WrongStore`, naming the holder) -- two writers of one record each adopted the other's runners and
    dropped events as duplicates. None for another kind of store (not locked here: docs/design.md)."""
    identity = store_identity(db_url)
    if not identity.startswith("sqlite:/"):
        return None
    path = identity.removeprefix("sqlite:") + ".labd-lock"
    try:  # not through a symlink (another user's, in a shared directory: it was truncated and written)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise WrongStore(f"{path} is a symbolic link: the store's lock file must be a file of its own "
                             "(remove the link)") from None
        return None  # a directory we cannot write: the store cannot be opened either, and says so itself
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise WrongStore(f"{path} is not a regular file of this user: the store's lock file must be (remove it)")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another labd daemon"
        os.close(fd)
        raise WrongStore(f"the store {identity} is written by {holder}: one daemon writes a store (give this home "
                         "a database of its own)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"the labd daemon of home {layout.home} (pid {os.getpid()})".encode(), 0)
    return fd
