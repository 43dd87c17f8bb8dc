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

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from labd.ipc.paths import Layout, UnusableHome

__all__ = ["WrongStore", "check_store", "lock_store", "record_store", "store_identity"]

FILE = "store"


class WrongStore(UnusableHome):
    """The home's sessions are recorded in another store than the one this daemon was given."""


def store_identity(db_url: str) -> str:
    """The store ``db_url`` names, without credentials: ``sqlite:`` and the file's real path, else
    ``scheme://host:port/database?query``."""
    if db_url.startswith("sqlite:"):
        path = db_url.split(":///", 1)[1] if ":///" in db_url else ""
        return f"sqlite:{os.path.realpath(path.split('?', 1)[0])}" if path else db_url
    parts = urlsplit(db_url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{query}"


def check_store(layout: Layout, db_url: str) -> None:
    """Refuse (:class:`WrongStore`) a store other than the one the home recorded (:func:`record_store`)."""
    path: Path = layout.home / FILE
    try:
        recorded = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise UnusableHome(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    mine = store_identity(db_url)
    if recorded and recorded != mine:
        raise WrongStore(
            f"home {layout.home} keeps the sessions of the store {recorded}, not of {mine}: a daemon on another store "
            "would take the home's sessions for deleted ones (remove their directories, stop their runners). Give "
            f"this store a home of its own (--home), or, if the database was moved there, write its new place in "
            f"{path} (or delete that file)")


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
    tmp = path.with_name(FILE + ".tmp")
    tmp.write_text(store_identity(db_url) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def lock_store(layout: Layout, db_url: str) -> int | None:
    """For a SQLite store, hold ``<database>.labd-lock`` (flock) for as long as the daemon runs and return its file
    descriptor: a second daemon on the same file (another home given it with ``--db``) is refused
    (:class:`WrongStore`, naming the holder) -- two writers of one record each adopted the other's runners and
    dropped events as duplicates. None for another kind of store (not locked here: docs/design.md)."""
    identity = store_identity(db_url)
    if not identity.startswith("sqlite:/"):
        return None
    path = identity.removeprefix("sqlite:") + ".labd-lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:  # a directory we cannot write: the store cannot be opened either, and says so itself
        return None
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
