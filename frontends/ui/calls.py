"""How the dashboard calls the daemon: each call in a daemon thread of its own, given up when the server stops.

anyio's worker threads are joined by the interpreter at exit, so one blocked on a stuck daemon (up to its
client's timeout) held up the dashboard's stop by ~15 s and ended in a traceback per request. A thread of our own
is left to its timeout instead, and the request waiting for it answers 503 ``stopping`` at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from labd.ipc.client import LabdError

__all__ = ["DAEMON_THREADS", "Stopping", "http_status", "in_thread"]

T = TypeVar("T")
#: At most this many requests wait on the daemon at once (others queue): as many as anyio's worker threads.
DAEMON_THREADS = 40
#: While it waits on the daemon, a request checks this often whether the server is stopping.
STOP_POLL_S = 0.1


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
