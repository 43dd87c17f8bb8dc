"""Opening the database: engine options per backend, SQLite pragmas, and Alembic migrations."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import ArgumentError, DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError

from labd.store.urls import shown_url

__all__ = ["open_engine", "migrate", "downgrade", "is_sqlite", "Checkpointer", "NewerSchema", "UNREACHABLE",
           "unreachable", "unreachable_error"]

#: the database cannot be reached (a write is retried; a read fails as ``store_unavailable``); anything else it raises
#: means it refused the data
UNREACHABLE = (OperationalError, InterfaceError, DisconnectionError)


#: SQLite's OperationalError also says the statement is wrong (a bug, not an absent store)
_STATEMENT_ERRORS = ("no such table", "no such column", "syntax error", "has no column", "ambiguous column")


def unreachable(exc: BaseException) -> bool:
    """Did ``exc`` come from a store that cannot be reached now (its server gone, its connection dropped, the file
    locked or its disk failing), rather than from a wrong statement? A read that meets one is refused or tried
    again; a statement error is a bug, reported with its traceback."""
    if isinstance(exc, InterfaceError | DisconnectionError):
        return True
    if isinstance(exc, OperationalError):
        text = str(getattr(exc, "orig", None) or exc).lower()
        return not any(p in text for p in _STATEMENT_ERRORS)
    return False


def unreachable_error(exc: BaseException) -> str:
    """What a client is told when a read met a store that cannot be reached: the driver's first line, not its
    background link."""
    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (f"the store cannot be reached just now ({first[0][:300] if first else type(exc).__name__}); try again "
            "once it is back (`labd status` shows the store)")

_MIGRATIONS = Path(__file__).parent / "migrations"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


#: how long a SQLite statement waits for another process's lock before the store counts as unavailable (seconds)
BUSY_TIMEOUT_S = 30.0


def busy_timeout() -> float:
    """:data:`BUSY_TIMEOUT_S`, or ``LABD_DB_BUSY_TIMEOUT`` (seconds; the fault tests shorten it, so that "the store
    refuses writes" is seen in seconds, not half a minute)."""
    try:
        return max(0.1, float(os.environ["LABD_DB_BUSY_TIMEOUT"]))
    except (KeyError, ValueError):
        return BUSY_TIMEOUT_S


def check_url(url: str) -> None:
    """Raise :class:`ValueError` saying why the daemon could not use database ``url``: not a URL, a database labd does
    not keep its record in (SQLite and PostgreSQL only), or a driver that is not installed (it failed with a
    traceback at start)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"{shown_url(url)!r} is not a database URL (sqlite:///PATH or "
                         "postgresql+psycopg://USER@HOST/DB)") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"labd keeps its record in SQLite or PostgreSQL (sqlite:///PATH, postgresql+psycopg://USER@"
                         f"HOST/DB), not {parsed.get_backend_name()!r}")
    try:
        parsed.get_dialect().import_dbapi()
    except (ImportError, ArgumentError) as exc:  # NoSuchModuleError is an ArgumentError
        hint = (" (labd's PostgreSQL driver is psycopg: postgresql+psycopg://..., from pip install 'labd[postgres]')"
                if parsed.get_backend_name() == "postgresql" else "")
        raise ValueError(f"no driver for {parsed.drivername}: {exc}{hint}") from None


def probe(url: str, timeout: float = 10.0, also: Callable[[Any], object] | None = None) -> None:
    """Raise :class:`ValueError` if the daemon could not write database ``url`` now (``labd serve --check``, after
    :func:`check_url`): a SQLite file it could not create or write, a PostgreSQL server it cannot reach or log in to
    within ``timeout`` s. ``also`` is called with the connection to check more (read only)."""
    if is_sqlite(url):
        path = _sqlite_path(url)
        if path is None:
            return
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(f"cannot create the SQLite file {path}: {_no_folder(folder)}")
        target = path if os.path.exists(path) else folder
        if not os.access(target, os.R_OK | os.W_OK):
            raise ValueError(f"cannot write the SQLite {'file' if target == path else 'directory'} {target}")
        if target != path:
            return
        # an existing file: is it a store this labd can open? (read only: nothing is changed by a check)
        engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    else:
        engine = create_engine(url, connect_args={"connect_timeout": max(1, int(timeout))})
    try:
        with engine.connect() as conn:
            check_revision(conn)  # also reads the file: "file is not a database" for a damaged one
            if also is not None:
                also(conn)
    except SQLAlchemyError as exc:
        raise ValueError(f"cannot use the database {shown_url(url)}: {str(exc).splitlines()[0]}") from None
    finally:
        engine.dispose()


def _sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL; None for an in-memory database."""
    path = url.split(":///", 1)[-1]
    return path if path and path != ":memory:" else None


def _no_folder(folder: str) -> str:
    return f"the directory {folder} does not exist"


def open_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, NORMAL sync and a busy timeout on every connection."""
    if is_sqlite(url):
        path = _sqlite_path(url)
        if path is not None and not os.path.exists(path):
            try:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # the store is the user's alone
            except OSError as exc:  # e.g. --db naming a directory that does not exist: say so, no traceback
                folder = os.path.dirname(os.path.abspath(path))
                hint = f" ({_no_folder(folder)})" if not os.path.isdir(folder) else ""
                raise ArgumentError(f"cannot create the SQLite file {path}: {exc.strerror or exc}{hint}") from None
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout()})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across process crashes in WAL mode (only an OS crash can lose the last commits).
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # Checkpoints are run by store.db.Checkpointer on its own thread and connection, so the
            # single writer never stops to copy the WAL back into the database (measured: the writer's
            # time per event drops; docs/benchmarks.md).
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class NewerSchema(ValueError):
    """The database's schema revision is none this labd knows: a newer labd wrote it (a downgrade)."""


def _scripts() -> Any:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg, ScriptDirectory.from_config(cfg)


def check_revision(conn: Any) -> str | None:
    """The store's schema revision (None: a new, empty database); :class:`NewerSchema` if this labd does not know
    it. Alembic raised a 60-line traceback for one (a downgrade), and `labd serve --check` said nothing."""
    from alembic.runtime.migration import MigrationContext

    current = MigrationContext.configure(conn).get_current_revision()
    _cfg, scripts = _scripts()
    known = {rev.revision for rev in scripts.walk_revisions()}
    if current is not None and current not in known:
        raise NewerSchema(f"the database was written by a newer labd (its schema is at revision {current!r}; this "
                          f"labd knows up to {scripts.get_current_head()!r}): run that labd's version, or keep this "
                          "one's store apart (--db)")
    return current  # type: ignore[no-any-return]


def migrate(engine: Engine, on_pending: Callable[[], object] | None = None) -> None:
    """Apply Alembic migrations up to head (idempotent). ``on_pending`` is called first when there are some to
    apply (the daemon tells systemd to wait: a migration over a big store takes seconds to minutes). Raises
    :class:`NewerSchema` for a store a newer labd wrote."""
    from alembic import command

    cfg, scripts = _scripts()
    with engine.begin() as conn:
        if check_revision(conn) != scripts.get_current_head() and on_pending is not None:
            on_pending()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def downgrade(engine: Engine, revision: str) -> None:
    """Take a migrated store back to Alembic ``revision`` (tests and benchmarks make a store as an older labd left
    it, to check a migration; labd itself only migrates up)."""
    from alembic import command

    cfg, _scripts_dir = _scripts()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


class Checkpointer(threading.Thread):
    """Copies SQLite's write-ahead log back into the database from a thread of its own.

    PASSIVE checkpoints never block the writer or readers; when the log has grown past ``truncate_pages``
    and nothing is being written, a TRUNCATE checkpoint also shrinks the file again; and so after a deletion
    (:meth:`compact_soon`), whatever the log's size.
    """

    def __init__(self, engine: Engine, interval: float = 1.0, truncate_pages: int = 50_000) -> None:
        super().__init__(name="labd-checkpoint", daemon=True)
        self.engine = engine
        self.interval = interval
        self.truncate_pages = truncate_pages
        self._halt = threading.Event()
        self._compact = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def compact_soon(self) -> None:
        """Shrink the log at the next round where everything in it is checkpointed: sessions were deleted (`labd
        rm`, `prune`), whose deletion wrote about as much log as they held (a 100 MB session's took the database's
        files from 102 to 203 MB on disk, until the log passed ``truncate_pages``)."""
        self._compact.set()

    def run(self) -> None:
        from sqlalchemy import exc

        while not self._halt.wait(self.interval):
            try:
                with self.engine.connect() as conn:
                    raw = conn.connection.dbapi_connection
                    assert raw is not None  # noqa: S101 - an open connection has one
                    busy, log, done = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if (log > self.truncate_pages or self._compact.is_set()) and done == log:
                        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                        self._compact.clear()
            except exc.SQLAlchemyError:
                continue  # the next round tries again
            except Exception:  # noqa: BLE001 - sqlite3 errors from the raw connection: same
                continue
        try:  # a last complete checkpoint, so a stopped daemon leaves a compact database
            with self.engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                if raw is not None:
                    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
