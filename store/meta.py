"""The store's facts about itself (table ``store_meta``): whose record it is, and how many sessions it ever recorded.

Read and written at the daemon's start by :mod:`labd.daemon.store_identity`; ``sessions_created`` is also raised by
the store writer in the transaction that inserts sessions (:meth:`labd.store.writer.BatchWriter.commit`).
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, insert, select, update

from labd.store.schema import store_meta

__all__ = ["HOME", "SESSIONS_CREATED", "read_meta", "set_home", "sessions_created"]

HOME = "home"
SESSIONS_CREATED = "sessions_created"


def read_meta(bind: Engine | Connection) -> dict[str, tuple[str | None, int | None]]:
    """Every fact, as ``{key: (value, n)}`` (through an engine, or on a connection: ``labd serve --check``'s)."""
    if isinstance(bind, Connection):
        return _read(bind)
    with bind.connect() as conn:
        return _read(conn)


def _read(conn: Connection) -> dict[str, tuple[str | None, int | None]]:
    return {r[0]: (r[1], r[2]) for r in conn.execute(select(store_meta.c.key, store_meta.c.value, store_meta.c.n))}


def sessions_created(engine: Engine) -> int:
    """Sessions the store ever inserted (deletions not subtracted)."""
    return int(read_meta(engine).get(SESSIONS_CREATED, (None, 0))[1] or 0)


def set_home(engine: Engine, value: str) -> None:
    """Record the home whose record this store is (replacing the one recorded, if any)."""
    with engine.begin() as conn:
        done = conn.execute(update(store_meta).where(store_meta.c.key == HOME).values(value=value)).rowcount
        if not done:
            conn.execute(insert(store_meta).values(key=HOME, value=value))
