"""One daemon writes a PostgreSQL store, for as long as it runs: a session-level advisory lock on the store's database
and schema, held on a connection of its own and kept through a server's outage.

The lock is the connection's: a server restart, or a network cut that ends the connection, releases it. Taken only
at start, it was then gone for the rest of the daemon's life, and a second daemon started on the store after an
outage was not refused (both adopted each other's runners and dropped events as duplicates: admin review,
2026-12-06). :class:`ServerStoreLock` checks the connection every :data:`CHECK_S` seconds, on a thread of its own (a
dead server's connect may hang), and takes the lock again on a new connection as soon as the server answers. If
another daemon took it meanwhile, ``taken`` says so and the main loop stops this daemon (its sessions keep running:
whichever daemon writes the store is the one to serve them). A SQLite store is locked by a file (:func:`lock_store`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog

from labd.daemon.store_identity import PG_LOCK_SQL, WrongStore, store_identity

__all__ = ["ServerStoreLock", "CHECK_S"]

#: seconds between checks of the connection that holds the lock (and between tries to take it again)
CHECK_S = 1.0
_LOCK_SQL = PG_LOCK_SQL.format("pg_try_advisory_lock")


class ServerStoreLock(threading.Thread):
    """The advisory lock of a PostgreSQL store: :meth:`acquire` at start (:class:`WrongStore` if another daemon
    holds it), then :meth:`start` keeps it. ``held``: this daemon holds it now; ``taken``: why it cannot any more
    (another daemon took it during an outage), else None."""

    def __init__(self, engine: Any, db_url: str) -> None:
        super().__init__(name="labd-store-lock", daemon=True)
        self.engine, self.db_url = engine, db_url
        self.conn: Any = None
        self.held = False
        self.taken: str | None = None
        #: (since, why) the connection holding the lock was lost, until it is held again: the server is out of reach
        #: (an idle daemon learns it here first: no write has failed yet)
        self.lost: tuple[float, str] | None = None
        self._halt = threading.Event()  # not _stop: threading.Thread has a method of that name, join() calls it
        self.log = structlog.get_logger("labd.daemon")

    def acquire(self) -> None:
        """Take the lock on a new connection; :class:`WrongStore` when another daemon holds it."""
        from sqlalchemy import text

        conn = self.engine.connect()
        try:
            got = conn.execute(text(_LOCK_SQL)).scalar()
            conn.commit()  # the lock is the connection's, not the transaction's: it stays
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            raise WrongStore(f"the store {store_identity(self.db_url)} is written by another labd daemon: one daemon "
                             "writes a store (give this home a database or schema of its own)")
        self.conn, self.held, self.lost = conn, True, None

    def run(self) -> None:
        while not self._halt.wait(CHECK_S):
            if self.held and self._alive():
                continue
            try:
                self.acquire()
            except WrongStore as exc:
                self.taken = str(exc)
                self.log.error("another daemon took the store's lock while its server was out of reach; this "
                               "daemon stops (its sessions keep running)", error=self.taken)
                return
            except Exception:  # noqa: BLE001 - the server is still out of reach: try again at the next check
                continue
            self.log.info("the store's lock is held again after its connection was lost")

    def _alive(self) -> bool:
        from sqlalchemy import text

        try:
            self.conn.execute(text("SELECT 1")).scalar()
            self.conn.commit()
            return True
        except Exception as exc:  # noqa: BLE001 - any failure: the connection (and so the lock) is gone
            self.held = False
            self.lost = (time.monotonic(), (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300])
            self.log.warning("lost the connection that holds the store's lock; taking it again once the server "
                             "answers", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            try:
                self.conn.invalidate()
            except Exception:  # noqa: BLE001
                pass
            return False

    def close(self) -> None:
        """Stop keeping the lock and release it (the connection closes)."""
        self._halt.set()
        if self.is_alive():
            self.join(10)
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - a dead connection: its lock is gone anyway
                pass
