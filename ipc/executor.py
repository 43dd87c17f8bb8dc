"""``labd.Executor``: the standard library's ``concurrent.futures.Executor`` with one labd session per call.

    with labd.Executor(max_workers=4, memory="1G") as ex:
        squares = list(ex.map(lambda x: x * x, range(100)))   # 100 sessions, at most 4 at once, in order

Each worker thread owns a :class:`~labd.ipc.client.Client` (threads sharing one take turns) and handles one call
at a time: it starts the session, follows its event stream until ``session.ended`` (no polling loop), and
resolves the future from the record (:meth:`Client.result`). So at most ``max_workers`` sessions of this
executor run at once. Calls are pickled in :meth:`Executor.submit`, so an argument that cannot be sent fails
there, in the caller. Cancelling a future whose session runs stops the session.

A daemon restart (``labd shutdown``, ``labd serve``) fails no future: the sessions survive it, a worker waiting for
one carries on with the next daemon (:meth:`Client.result`), and a call not yet started waits for that daemon before
its session starts -- up to ``restart_wait`` seconds after the stop; past it, the futures fail with ``no_daemon``
(naming the session, if it had one). Only a start in flight when the daemon stopped fails (it may or may not have
started a session: it is not sent again).
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent import futures
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, RUNNING
from dataclasses import dataclass
from typing import Any

from labd.ipc.client import Client, LabdError
from labd.ipc.connection import daemon_alive
from labd.ipc.functions import FunctionCall, encode_call
from labd.ipc.limits import check_limits

__all__ = ["Executor", "SessionFuture"]


class SessionFuture(futures.Future[Any]):
    """A future whose call runs as a labd session; ``session`` is its id once started (else ``None``)."""

    def __init__(self, stop: Callable[[str], None]) -> None:
        super().__init__()
        self.session: str | None = None
        self._stop = stop

    def cancel(self) -> bool:
        """Cancel the call: a pending one never starts; a running one's session is stopped (returns True)."""
        with self._condition:
            running = self._state == RUNNING
            if running:
                # concurrent.futures cannot cancel a running call; a session can be stopped, so we do, and mark
                # the future as set_running_or_notify_cancel() marks a cancelled one (the waiters are told now).
                self._state = CANCELLED_AND_NOTIFIED
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
                self._condition.notify_all()
            sid = self.session
        if not running:
            return super().cancel()
        if sid is not None:  # else the worker stops it as soon as it has the id (see _attach)
            self._stop(sid)
        self._invoke_callbacks()  # type: ignore[attr-defined]  # Future's own (untyped) helper, as in cancel()
        return True

    def _attach(self, sid: str) -> bool:
        """Record the started session's id; True if the future was cancelled meanwhile (stop it then)."""
        with self._condition:
            self.session = sid
            return self.cancelled()


@dataclass
class _Work:
    future: SessionFuture
    call: FunctionCall


#: executors not shut down: at interpreter exit each is shut down and waited for, as concurrent.futures' pools are (its
#: workers are daemon threads, so that one left without shutdown cannot keep the process from exiting; without this
#: hook, the calls still queued at exit were dropped without a word, and a running one was no longer followed)
_LIVE: weakref.WeakSet[Executor] = weakref.WeakSet()


def _at_exit() -> None:
    for ex in list(_LIVE):
        ex.shutdown(wait=True)


# threading's own exit hook runs before daemon threads are abandoned (concurrent.futures.thread registers there too)
getattr(threading, "_register_atexit", atexit.register)(_at_exit)


class Executor(futures.Executor):
    """Run calls as labd sessions, at most ``max_workers`` at once (runs your code as you).

    ``home`` selects the daemon (default: ``$LABD_HOME``); ``name`` prefixes session names; ``memory``, ``cpu``,
    ``timeout``, ``budget``, ``budget_action`` and ``max_output`` are each session's limits (as for ``Client.start``);
    ``stop_grace`` is the seconds a cancelled session gets to stop at a step boundary before its runner is sent
    SIGTERM (the daemon's default; then ``term_grace``, 5 s by default, before SIGKILL);
    ``restart_wait`` the seconds the workers wait for a daemon to serve again after a stop (a restart; ``math.inf``:
    as long as it takes).
    Futures fail with :class:`~labd.ipc.functions.RemoteError` when the function raises. A limit the daemon would
    refuse raises :class:`LabdError` (``bad_limits``) here (what only the daemon knows, its ``memory_total``, is
    checked when each session starts).
    """

    def __init__(self, max_workers: int = 4, home: str | os.PathLike[str] | None = None, *, name: str | None = None,
                 memory: str | int | None = None, cpu: str | float | None = None,
                 timeout: str | float | None = None, budget: float | None = None,
                 budget_action: str | None = None, stop_grace: float | None = None,
                 max_output: str | int | None = None, restart_wait: float = 60.0) -> None:
        if not isinstance(max_workers, int) or max_workers <= 0:
            raise ValueError("max_workers must be a positive integer")
        self._restart_wait = restart_wait
        self._max_workers = max_workers
        self._home = home
        self._name = name
        self._limits: dict[str, Any] = {"memory": memory, "cpu": cpu, "timeout": timeout, "budget": budget,
                                        "budget_action": budget_action, "max_output": max_output}
        self._grace = stop_grace
        self._control = Client(home, restart_wait=restart_wait)  # fails here, not in a worker, when no daemon serves
        try:  # a limit the daemon would refuse fails here, not in every future (cluster: not this machine's CPUs)
            check_limits({"output" if k == "max_output" else k: v for k, v in self._limits.items() if v is not None},
                         cluster=not self._control.local)
        except LabdError:
            self._control.close()
            raise
        self._control_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.RLock()  # re-entered: a future cancelled under it runs its done callback (_done)
        self._shutdown = False
        self._count = 0
        self._closed = False
        #: when the daemon was seen gone, until when the workers wait for a restarted one (None: it serves)
        self._gone_deadline: float | None = None
        self._pending: set[SessionFuture] = set()  # futures not done yet (cancelled when an exception leaves `with`)
        _LIVE.add(self)

    # ---- concurrent.futures.Executor --------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> SessionFuture:
        """Schedule ``fn(*args, **kwargs)`` as a session; pickling errors are raised here (``LabdError``)."""
        call = encode_call(fn, args, kwargs)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = SessionFuture(self._stop)
            self._pending.add(future)
            future.add_done_callback(self._done)
            self._queue.put(_Work(future, call))
            if len(self._threads) < self._max_workers:
                t = threading.Thread(target=self._worker, name=f"labd-executor-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
        return future

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        """Leaving ``with``: wait for every call, as ``concurrent.futures`` does; but when an exception leaves the
        block (Ctrl-C's ``KeyboardInterrupt`` too), the calls not started are cancelled and the running sessions
        stopped first: each call is a session that spends time and money, not to be run for a caller that is gone."""
        if exc_type is not None:
            self.cancel_all()  # the workers skip the calls cancelled in their queue
        self.shutdown(wait=True)
        return None

    def cancel_all(self) -> None:
        """Cancel every call not done: those not started never start, the running ones' sessions are stopped."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            future.cancel()

    def _done(self, future: futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)  # type: ignore[arg-type]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; ``cancel_futures`` cancels the calls not started; ``wait`` waits for the running ones."""
        with self._lock:
            already, self._shutdown = self._shutdown, True
            if cancel_futures:
                while True:
                    try:
                        work = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if work is not None:
                        work.future.cancel()
            if not already or cancel_futures:  # the queue drained above held the end markers of a first call
                for _ in self._threads:
                    self._queue.put(None)  # one end marker per worker
        if wait:
            _LIVE.discard(self)
            for t in self._threads:
                t.join()
            with self._control_lock:
                if not self._closed:
                    self._closed = True
                    self._control.close()

    # ---- workers ----------------------------------------------------------------------------------
    def _worker(self) -> None:
        client: Client | None = None
        try:
            while True:
                work = self._queue.get()
                if work is None:
                    return
                if not work.future.set_running_or_notify_cancel():
                    continue
                try:
                    if client is None:
                        client = self._connect()
                    value = self._run(client, work)
                except Exception as exc:  # noqa: BLE001 - RemoteError, LabdError, an unpicklable value: the future's
                    self._settle(work.future, exc=exc)
                else:
                    self._settle(work.future, value=value)
        finally:
            if client is not None:
                client.close()

    def _gone_until(self, restart_wait: float) -> float:
        """The daemon is gone: the deadline for its successor, shared by the workers (set by the first to see)."""
        with self._lock:
            if self._gone_deadline is None:
                self._gone_deadline = time.monotonic() + restart_wait
            return self._gone_deadline

    def _connect(self) -> Client:
        """A worker's client; while no daemon serves (a restart), retried until :meth:`_gone_until`."""
        while True:
            try:
                client = Client(self._home, restart_wait=self._restart_wait)
            except LabdError as exc:
                if exc.code != "no_daemon" or time.monotonic() >= self._gone_until(self._control.restart_wait):
                    raise
                time.sleep(0.1)
            else:
                self._served()
                return client

    def _served(self) -> None:
        """A daemon serves (again): a later stop gets its own full wait."""
        with self._lock:
            self._gone_deadline = None

    def _await_daemon(self, client: Client) -> None:
        """Before a session starts: a serving daemon -- the client's, or a restarted one it moves to (nothing was
        sent yet, so nothing is sent twice); ``no_daemon`` if none serves by :meth:`_gone_until`."""
        if client.local and not daemon_alive(client.info):
            client.await_daemon(self._gone_until(client.restart_wait))
        self._served()

    def _run(self, client: Client, work: _Work) -> Any:
        self._await_daemon(client)
        with self._lock:
            self._count += 1
            name = f"{self._name}-{self._count}" if self._name else None
        sid = client.start_function(work.call, name=name, **self._limits)
        if work.future._attach(sid):  # cancelled while starting
            self._stop(sid)
        return client.result(sid)  # follows the session's events until it ends

    @staticmethod
    def _settle(future: SessionFuture, *, value: Any = None, exc: BaseException | None = None) -> None:
        if future.cancelled():
            return
        try:
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(value)
        except futures.InvalidStateError:  # cancelled between the check and now
            pass

    def _stop(self, sid: str) -> None:
        with self._control_lock:
            if self._closed:
                return
            try:
                self._control.reconnect()  # the daemon restarted: stop it through the new one
                self._control.stop(sid, self._grace)
            except LabdError:  # already ended (not_running), or the daemon is gone: nothing left to stop
                pass
