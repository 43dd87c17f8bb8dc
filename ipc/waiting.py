"""The SDK's waiting calls, and how they outlive a daemon restart: :meth:`~labd.ipc.client.Client.result`,
``wait`` and ``follow``, and the reconnection they share.

A session survives ``labd shutdown`` then ``labd serve`` (the new daemon adopts it), so a call waiting for it
should too: it moves to the daemon the home's connection file names now (:meth:`Waiting.reconnect`), within its
own deadline or the client's ``restart_wait``, and goes on from where it was (a follow gap-free). A mixin of
:class:`~labd.ipc.client.Client`, kept apart because this is one concern: the rest of the client is one request
per call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import zmq

from labd.ipc.connection import (
    ConnectionFileError,
    ConnectionInfo,
    client_socket,
    daemon_alive,
    events_socket,
    read_connection_file,
)
from labd.ipc.errors import LabdError, check_timeout
from labd.ipc.events import TERMINAL_STATUSES
from labd.ipc.follow import FollowCursor
from labd.ipc.live import LIVE_RCVHWM, decode_live
from labd.ipc.paths import Layout
from labd.ipc.wire import DEFAULT_MAX_MESSAGE, Codec, WireError

__all__ = ["Waiting"]

STORE_RETRY_S = 0.5  # between reads refused while the daemon's store cannot be reached


class Waiting:
    """Waiting for sessions across daemon restarts (mixed into :class:`~labd.ipc.client.Client`)."""

    # set by Client.__init__
    layout: Layout
    info: ConnectionInfo
    local: bool
    restart_wait: float
    max_request: int
    _ctx: zmq.Context
    _sock: zmq.Socket
    _lock: threading.RLock
    _codec: Codec
    _generation: int

    if TYPE_CHECKING:  # the client's one-request calls these use
        def request(self, type_: str, **body: Any) -> Any: ...

        def session(self, ref: str) -> dict[str, Any]: ...

        def events(self, ref: str, since: int = 0, limit: int = 5000, kinds: list[str] | None = None, *,
                   full: bool = False, node: str | None = None, agent: str | None = None) -> dict[str, Any]: ...

        def history(self, ref: str, since: int = 0, kinds: list[str] | None = None, *, full: bool = False,
                    node: str | None = None, agent: str | None = None) -> Iterator[dict[str, Any]]: ...

    # ---- surviving a daemon restart -----------------------------------------------------------------
    def reconnect(self) -> bool:
        """Move this client to the daemon the home's connection file names now, if that is another, running
        daemon than the one it talks to (a restart: a new pid, maybe new endpoints; the key stays the home's).
        True if it moved. A remote client (connection file of ``labd remote add``) never moves. Nothing is
        re-sent: a request in flight to the stopped daemon is the caller's to retry, or not."""
        if not self.local:
            return False
        try:
            info = read_connection_file(self.layout)
        except ConnectionFileError:  # none yet (the old one removed its file, the new one has not written one)
            return False
        if (info.pid, info.start_ticks, info.started) == (self.info.pid, self.info.start_ticks, self.info.started):
            return False
        if not daemon_alive(info):
            return False
        sock = client_socket(self._ctx, info, zmq.DEALER)
        sock.connect(info.control)
        with self._lock:  # (another thread's exchange holds the old socket)
            self._sock.close(0)
            self._sock, self.info = sock, info
            self._codec = Codec(info.key_bytes)
            self.max_request = info.max_message or DEFAULT_MAX_MESSAGE
            self._generation += 1
        return True

    def await_daemon(self, deadline: float | None = None, *, session: str | None = None) -> None:
        """Return once a daemon serves: at once if this client's still runs, else when a new one does
        (:meth:`reconnect`). ``deadline`` (``time.monotonic()``; None: :attr:`restart_wait` from now): past it,
        :class:`LabdError` ``no_daemon``, naming ``session`` (a waiting call's) and telling to wait again later."""
        if not self.local or daemon_alive(self.info):
            return
        begun = time.monotonic()
        if deadline is None:
            deadline = begun + self.restart_wait
        while not self.reconnect():
            if time.monotonic() >= deadline:
                waited = time.monotonic() - begun
                where = f"home {self.layout.home}"
                if session is None:
                    raise LabdError("no_daemon", f"the labd daemon of {where} (pid {self.info.pid}) stopped and no "
                                    f"daemon came back within {waited:.0f}s; start one with `labd serve`",
                                    {"pid": self.info.pid})
                raise LabdError("no_daemon", f"the labd daemon of {where} (pid {self.info.pid}) stopped while "
                                f"waiting for session {session}, and no daemon came back within {waited:.0f}s; the "
                                f"session keeps running (the next `labd serve` adopts it): call result({session!r}) "
                                f"or wait({session!r}) again once a daemon serves", {"pid": self.info.pid,
                                                                                      "session": session})
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _reading(self, read: Callable[[], Any], deadline: float | None, session: str | None) -> Any:
        """``read()`` -- read-only requests, safe to send again -- retried on a daemon that stopped before it
        replied, once a daemon serves again (:meth:`await_daemon`, up to ``deadline``)."""
        while True:
            try:
                return read()
            except LabdError as exc:
                if exc.code == "store_unavailable":
                    self._store_wait(exc, deadline)
                    continue
                if exc.code != "no_daemon" or not self.local:
                    raise
                self.await_daemon(deadline, session=session)

    @staticmethod
    def _store_wait(exc: LabdError, deadline: float | None) -> None:
        """A read refused because the daemon's store cannot be reached (a database server restarting): tried again
        in a moment, up to ``deadline`` (None: for as long as it takes, as a wait with no timeout waits for the
        session). `labd run --wait`, `labd logs -f` and ``result()`` gave up on a 3 s restart (admin retest)."""
        if deadline is not None and time.monotonic() >= deadline:
            raise exc
        time.sleep(STORE_RETRY_S if deadline is None else min(STORE_RETRY_S, max(0.0, deadline - time.monotonic())))

    # ---- waiting for sessions -----------------------------------------------------------------------
    def lookup(self, ref: str, timeout: float | None = None) -> dict[str, Any]:
        """The session ``ref`` names (id, id prefix or name), as :meth:`session` reads it, read again on the next
        daemon if this one stops before it replies (within ``timeout``; None: :attr:`restart_wait`): what a caller
        that then waits or follows resolves its session with. ``not_found`` and ``ambiguous`` as :meth:`session`."""
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._reading(lambda: self.session(ref), deadline, ref)  # type: ignore[no-any-return]

    def result(self, ref: str, timeout: float | None = None) -> Any:
        """Wait for a session to end and return its result: a submitted function's return value (unpickled),
        or a workflow's JSON result. If it did not complete, raise :class:`~labd.ipc.functions.RemoteError`
        (remote type name, message, traceback); one that completed without its result in the record (too large for
        one event, or nested too deeply: the runner records why), ``ResultMissing`` with that reason. Reads the
        record: works from any process, at any later time.
        Raises :class:`LabdError` ``timeout`` after ``timeout`` seconds (None: no limit; see :func:`check_timeout`).

        Survives a daemon restart (the session does): it carries on with the next daemon if one serves within
        ``timeout`` (None: within :attr:`restart_wait` of the stop), else raises ``no_daemon`` naming the session."""
        from labd.ipc.functions import FUNCTION_WORKFLOW, decode_result, remote_error, result_missing

        end = self.outcome(ref, timeout)
        row, finished = end["session"], end["finished"]
        if row["status"] == "completed" and finished is not None and not result_missing(finished):
            return decode_result(finished.get("result"), session=row["id"],
                                 pickled=row["workflow"] == FUNCTION_WORKFLOW)
        raise remote_error(row, finished, end["error"])

    def outcome(self, ref: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait for a session to end and return what its record says of how its last run ended, decoding nothing:
        ``{"session": its final row, "finished": the run's session.finished payload (None if its runner reported
        none), "error": a submitted function's recorded exception (type, message, traceback, pickle) or None: only a
        submitted function's session has one, any other workflow's custom events are its own}``. A pickled
        result stays as recorded (``{"labd.pickle": ..., "type", "repr", "size"}``): unpickling runs code, which a
        terminal showing a result must not (``labd result``); :meth:`result` unpickles. ``timeout`` and a daemon
        restart as in :meth:`result`."""
        from labd.ipc.functions import ERROR_EVENT, FUNCTION_WORKFLOW

        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        row = self._reading(lambda: self.session(ref), deadline, ref)
        sid = row["id"]
        if row["status"] not in TERMINAL_STATUSES:
            for _ in self.follow(sid, since=row["last_seq"], timeout=timeout):
                pass
            row = self._reading(lambda: self.session(sid), deadline, sid)
        def this_run() -> tuple[int, list[dict[str, Any]]]:
            # the outcome of the run that counts: a resumed session's earlier runs have theirs before the last
            # session.continued (the first session.finished was a failed run's: no result for a resume that completed)
            runs = list(self.history(sid, kinds=["session.continued"]))
            start = runs[-1]["seq"] if runs else 0
            return start, self.events(sid, since=start, kinds=["session.finished"], limit=1)["events"]
        start, found = self._reading(this_run, deadline, sid)
        finished = found[0]["payload"] if found else None
        error = None
        # A submitted function's runner records its exception as this custom event; another workflow could emit one
        # too, with a pickle of its choosing, which result() would load in the caller's process: not read for those.
        if finished is not None and row["status"] not in ("completed", "cancelled") \
                and row["workflow"] == FUNCTION_WORKFLOW:
            def last_error() -> dict[str, Any] | None:  # scanned page by page: a session's custom events are not held
                found = None
                for ev in self.history(sid, since=start, kinds=["custom"]):
                    if ev["payload"].get("name") == ERROR_EVENT and isinstance(ev["payload"].get("data"), dict):
                        found = ev["payload"]["data"]
                return found
            error = self._reading(last_error, deadline, sid)
        return {"session": row, "finished": finished, "error": error}

    def wait(self, ref: str, timeout: float | None = None, *,
             on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Follow a session until it ends; return its final row (``timeout``, and a daemon restart, as in
        :meth:`follow`). ``on_event``: called with each event followed meanwhile (e.g. to tell a person that the
        session paused and waits for them)."""
        limit = check_timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        for ev in self.follow(ref, timeout=limit):
            if on_event is not None:
                on_event(ev)
        return self._reading(lambda: self.session(ref), deadline, ref)  # type: ignore[no-any-return]

    def follow(self, ref: str, since: int = 0, *, until_end: bool = True,
               timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Events after ``since``: history from the store, then the live tail, each ``seq`` exactly once.

        Subscribes first, then reads history, then the live stream; a live event beyond the next
        expected ``seq`` (the live tail may drop under bursts) is filled in from the store
        (:class:`~labd.ipc.follow.FollowCursor`). Stops after ``session.ended`` when ``until_end`` (at once if the
        session had already ended at or before ``since``); raises
        :class:`LabdError` ``timeout`` after ``timeout`` s (None or ``math.inf``: no limit). A bad ``timeout``
        (NaN, negative: :func:`check_timeout`) is a :class:`ValueError` at the call, before anything is read.

        A daemon restart (``labd shutdown``, ``labd serve``: the session survives it) is followed through: once a
        daemon serves again, within ``timeout`` (None: :attr:`restart_wait` after the stop), the events go on from
        the last one yielded, none lost or repeated; else :class:`LabdError` ``no_daemon`` naming the session.
        """
        return self._follow(ref, since, until_end, check_timeout(timeout))

    def _subscribe(self, sid: str) -> tuple[zmq.Socket, Codec]:
        """A SUB socket on the current daemon's live events of session ``sid``, and the codec to read them."""
        sub = events_socket(self._ctx, self.info)  # CURVE: remote keys, or the local ones derived from the key
        sub.setsockopt(zmq.RCVHWM, LIVE_RCVHWM)  # a caller that stops iterating holds little
        sub.setsockopt(zmq.SUBSCRIBE, f"session.{sid}".encode())
        try:
            sub.connect(self.info.events)
        except zmq.ZMQError as exc:  # an endpoint libzmq refuses (a connection file edited by hand)
            sub.close(0)
            raise LabdError("bad_connection_file", f"cannot follow the daemon's events at {self.info.events!r}: "
                            f"{exc.strerror}") from None
        return sub, Codec(self.info.key_bytes)

    def _follow(self, ref: str, since: int, until_end: bool, timeout: float | None) -> Iterator[dict[str, Any]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        row = self._reading(lambda: self.session(ref), deadline, ref)
        sid = row["id"]
        generation = self._generation
        sub, codec = self._subscribe(sid)
        cursor = FollowCursor(since)
        try:
            def from_store(upto: int | None) -> Iterator[dict[str, Any]]:
                while True:
                    try:
                        for ev in self.history(sid, since=cursor.last):
                            if upto is not None and ev["seq"] > upto:
                                return
                            if cursor.stored(ev):
                                yield ev
                        return
                    except LabdError as exc:  # the daemon stopped: go on from cursor.last with the next one
                        if exc.code == "store_unavailable":  # its store restarting: go on once it answers
                            self._store_wait(exc, deadline)
                            continue
                        if exc.code != "no_daemon" or not self.local:
                            raise
                        self.await_daemon(deadline, session=sid)

            first = cursor.last
            yield from from_store(None)
            if cursor.last == first and row["status"] in TERMINAL_STATUSES:
                # it had ended (read before the history) and nothing came after `since`: its end is at or
                # before `since`, so no session.ended is coming (a resume would have shown in the history)
                cursor.ended = True
            # asked to follow from past the session's last event: its session.ended may come at or below `since`,
            # never to be yielded, and the loop would wait for it for ever; so while idle, its end is read instead
            beyond = since > row["last_seq"] and until_end and not cursor.ended
            idle_checks = 0.0
            while not (cursor.ended and until_end):
                if generation != self._generation:  # now talking to a restarted daemon: follow its event socket
                    sub.close(0)
                    sub, codec = self._subscribe(sid)
                    generation = self._generation
                if deadline is not None and time.monotonic() > deadline:
                    raise LabdError("timeout", f"session {sid} did not end within {timeout:g}s")
                if not sub.poll(250):
                    idle_checks += 0.25
                    if idle_checks >= 1.0:  # quiet for a while: make sure nothing was dropped live
                        idle_checks = 0.0
                        yield from from_store(None)
                        if beyond and not cursor.ended:
                            now = self._reading(lambda: self.request("session.get", session=sid,
                                                                     steps_limit=0)["session"], deadline, sid)
                            cursor.ended = now["status"] in TERMINAL_STATUSES and now["last_seq"] <= cursor.last
                    continue
                frames = sub.recv_multipart()
                idle_checks = 0.0
                try:
                    evs = decode_live(codec, frames[1:])
                except WireError:
                    continue
                for ev in evs:
                    upto = cursor.gap_before(ev)
                    if upto is not None:
                        yield from from_store(upto)
                    if cursor.live(ev):
                        yield ev
        finally:
            sub.close(0)


