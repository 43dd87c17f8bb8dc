"""How the dashboard calls the daemon: each call in a daemon thread of its own, given up when the server stops,
on a client taken from a small pool.

anyio's worker threads are joined by the interpreter at exit, so one blocked on a stuck daemon (up to its
client's timeout) held up the dashboard's stop by ~15 s and ended in a traceback per request. A thread of our own
is left to its timeout instead, and the request waiting for it answers 503 ``stopping`` at once.

A :class:`~labd.ipc.client.Client` costs a ZeroMQ context (an I/O thread), a connection and the key's set-up to
build; it is not thread-safe. :class:`ClientPool` lends each call a client of its own (never one another thread
holds) and takes it back afterwards, so a request costs a round trip, not a connection. A client is closed rather
than kept when its call did not reach the daemon (``no_daemon``, ``timeout``: it may be bound to a daemon that has
gone, or wait for a late reply) or raised anything but an error reply, and it is not lent again once its daemon
has stopped (a restarted daemon is reached with a new client, read from the connection file, as before). A call
the server abandons (a stop while the daemon is stuck) keeps its client until its thread is done with it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from labd.ipc.client import Client, LabdError
from labd.ipc.connection import daemon_alive

__all__ = ["DAEMON_THREADS", "ClientPool", "Stopping", "http_status", "in_thread"]

T = TypeVar("T")
#: At most this many requests wait on the daemon at once (others queue): as many as anyio's worker threads.
DAEMON_THREADS = 40
#: While it waits on the daemon, a request checks this often whether the server is stopping.
STOP_POLL_S = 0.1
#: Clients kept for reuse between calls (more may be lent at once, up to DAEMON_THREADS; the extra are closed).
POOL_IDLE = 4
#: Errors after which a client is not reused: it may be bound to a daemon that has gone, or have a reply in flight.
UNREACHABLE = ("no_daemon", "timeout", "unsafe_runtime_dir")


class Stopping(LabdError):
    """A request cut off by the server's stop while it waited on the daemon (503)."""

    def __init__(self) -> None:
        super().__init__("stopping", "the dashboard is stopping; the request was not completed")


def http_status(code: str) -> int:
    """The HTTP status of a :class:`LabdError` code: the same for every endpoint (JSON API, download, stream)."""
    if code == "not_found":
        return 404
    return 503 if code in ("no_daemon", "timeout", "stopping") else 400


async def in_thread(fn: Callable[[], T], stopping: Callable[[], bool]) -> T:
    """``fn()`` in a daemon thread of its own. Unlike anyio's worker threads, which the interpreter joins at
    exit, one blocked on a stuck daemon (up to its client's timeout) holds up neither a stop nor the exit: once
    ``stopping()`` is true (or the request is cancelled) this raises :class:`Stopping` (or the cancellation) and
    the thread's late result is dropped."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if done.done():  # abandoned meanwhile
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(result)

    def work() -> None:
        result, error = None, None
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting request, raised there
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop has closed: nobody waits for it any more
            pass

    threading.Thread(target=work, name="labd-ui daemon request", daemon=True).start()
    try:
        while True:
            finished, _ = await asyncio.wait({done}, timeout=STOP_POLL_S)
            if finished:
                return done.result()
            if stopping():
                raise Stopping()
    finally:
        done.cancel()  # nothing once it is done; else the thread's late result (or error) is dropped unseen


class ClientPool:
    """Clients of the daemon of ``home``, lent one per call (:meth:`call`, in a worker thread) and reused.

    Thread-safe; a client is only ever used by the thread it is lent to. :meth:`close` closes the idle ones (a
    client still lent, e.g. to a thread abandoned on a stuck daemon, is closed by that thread when it is done)."""

    def __init__(self, home: str | os.PathLike[str] | None, idle: int = POOL_IDLE) -> None:
        self.home = home
        self.max_idle = idle
        self._idle: list[Client] = []
        self._lock = threading.Lock()
        self._closed = False
        #: clients built (each one a connection set-up): the tests read it
        self.built = 0

    def call(self, fn: Callable[[Client], T]) -> T:
        """``fn(client)`` on a client of the pool's (built if none is idle). Blocking: call it in a worker thread."""
        client = self._take()
        keep = False
        try:
            result = fn(client)
            keep = True
            return result
        except LabdError as exc:
            keep = exc.code not in UNREACHABLE  # an error reply: the connection is fine
            raise
        finally:
            self._give_back(client, keep)

    def _take(self) -> Client:
        while True:
            with self._lock:
                client = self._idle.pop() if self._idle else None
            if client is None:
                with self._lock:
                    self.built += 1
                return Client(self.home)
            # a local daemon that stopped since: a request would wait for no reply; the next client reads the
            # connection file again (a restarted daemon). One /proc read, no request.
            if not client.local or daemon_alive(client.info):
                return client
            client.close()

    def _give_back(self, client: Client, keep: bool) -> None:
        with self._lock:
            if keep and not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(client)
                return
        client.close()

    def close(self) -> None:
        """Close the idle clients; clients lent at the time are closed when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for client in idle:
            client.close()
