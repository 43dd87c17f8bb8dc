"""The dashboard's live event streams: each wakes on the session's live tail, not on a timer.

A stream follows its session as ``Client.follow`` and ``labd top`` do (the same
:class:`~labd.ipc.follow.FollowCursor`): subscribe to the daemon's live tail (``session.<id>``) first, read the
store after the last ``seq`` sent, then send what the live tail brings; an event past the next ``seq`` (the live
tail drops under bursts) is preceded by the gap, read from the store. The SUB socket lives on the event loop
(``zmq.asyncio``): an idle stream holds a socket and a pending receive, and costs no thread, timer or request.
The store is read (through the dashboard's client pool, in an abandonable thread) only when the stream starts, to
fill a gap, after a daemon change, and as a check that the live tail dropped nothing at its end (a later message
would show a gap; the last one of a burst has none after it): a second after the tail goes quiet following the
stream's start or a burst (messages less than a second apart), then after 2, 4, ... up to :data:`RECHECK_MAX_S`
seconds of quiet. An isolated message (a ``resource.sample`` every few seconds) moves no check nearer: the tail
drops under bursts only, and the message itself shows nothing before it was dropped.

One :class:`DaemonWatch` per dashboard, not per stream, notices what a stream must react to without asking the
daemon: the server stopping (:data:`STOP_CHECK_S`), and the daemon of the home changing (its connection file and
``/proc``, every :data:`DAEMON_CHECK_S`): gone (the streams then say ``event: error`` every
:data:`ERROR_RETRY_S` seconds, as their store reads fail) or restarted (they subscribe to the new daemon's tail
and read the store from their last ``seq``: nothing lost across the restart, nothing sent twice). It runs only
while streams are open.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from labd.ipc.client import LabdError
from labd.ipc.connection import ConnectionFileError, ConnectionInfo, daemon_alive, events_socket, read_connection_file
from labd.ipc.follow import FollowCursor
from labd.ipc.live import LIVE_RCVHWM, decode_live
from labd.ipc.paths import layout_for
from labd.ipc.wire import Codec, WireError

__all__ = ["DaemonWatch", "follow_session"]

#: How often the watch checks whether the server is stopping (the streams end within about this).
STOP_CHECK_S = 0.2
#: How often the watch checks the daemon of the home (connection file + /proc: no request).
DAEMON_CHECK_S = 1.0
#: While the daemon cannot be read, a stream says so (``event: error``) and tries again this often.
ERROR_RETRY_S = 2.0
#: The store check after the live tail goes quiet: first after this many seconds, doubling up to RECHECK_MAX_S.
RECHECK_FIRST_S = 1.0
RECHECK_MAX_S = 60.0
#: A stream sends its events in chunks of about this many bytes, and between two it lets the loop run (and stops
#: if the client has gone): a page of 2000 events is never written, all at once, to a connection already closed.
STREAM_CHUNK = 32 * 1024
#: Events read from the store per request.
PAGE = 2000


def _identity(info: ConnectionInfo | None) -> tuple[Any, ...] | None:
    """What makes the daemon followed the same one (a restarted daemon may have new endpoints, mechanism, key)."""
    if info is None:
        return None
    return (info.pid, info.start_ticks, info.started, info.events, info.key, info.events_auth, info.events_public,
            info.server_public)


class DaemonWatch:
    """The daemon the streams follow (:attr:`info`, None while none serves) and the server's stop, watched by one
    task on the loop for all the streams; a stream registers (:meth:`register`) to be woken when either changes."""

    def __init__(self, home: str | os.PathLike[str] | None, stopping: Callable[[], bool]) -> None:
        self._layout = layout_for(home)
        remote = os.environ.get("LABD_CONNECTION_FILE") or None  # as Client reads it
        self._remote = Path(remote) if remote else None
        self._stopping = stopping
        self.info: ConnectionInfo | None = None
        self.stopped = False
        self._seen: tuple[Any, ...] | None = None  # the connection file's stat when info was read
        self._wakers: set[asyncio.Future[None]] = set()
        self._streams = 0
        self._task: asyncio.Task[None] | None = None

    # ---- streams ---------------------------------------------------------------------------------------
    def register(self) -> None:
        """A stream opens: the watch runs (and :attr:`info` is current) while any is open."""
        self._streams += 1
        if self._task is None or self._task.done():
            self._check_daemon()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="labd-ui daemon watch")

    def unregister(self) -> None:
        self._streams -= 1

    def waker(self) -> asyncio.Future[None]:
        """A future set at the next change (stop, daemon gone or new): a stream waits on it with its socket."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.stopped:
            fut.set_result(None)
        else:
            self._wakers.add(fut)
            fut.add_done_callback(self._wakers.discard)
        return fut

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if something changes meanwhile."""
        fut = self.waker()
        try:
            await asyncio.wait({fut}, timeout=seconds)
        finally:
            fut.cancel()

    # ---- the watch -----------------------------------------------------------------------------------
    async def _run(self) -> None:
        since_check = 0.0
        while self._streams > 0:
            await asyncio.sleep(STOP_CHECK_S)
            if self._stopping():
                self.stopped = True
                self._wake()
                return
            since_check += STOP_CHECK_S
            if since_check >= DAEMON_CHECK_S:
                since_check = 0.0
                if self._check_daemon():
                    self._wake()

    def _wake(self) -> None:
        for fut in list(self._wakers):
            if not fut.done():
                fut.set_result(None)

    def _check_daemon(self) -> bool:
        """Read the connection file again if it changed, and check its daemon still runs; True if :attr:`info`
        changed. A file read only when its stat changed, and one /proc read: cheap enough for every second."""
        path = self._remote or self._layout.connection_file
        try:
            st = os.stat(path)
            seen: tuple[Any, ...] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            seen = None
        info = self.info
        if seen is None:
            info = None
        elif seen != self._seen or info is None:
            try:
                info = read_connection_file(self._layout, self._remote)
            except ConnectionFileError:
                info = None
        if info is not None and self._remote is None and not daemon_alive(info):
            info = None  # killed or crashed, its file left behind
        self._seen = seen
        changed = _identity(info) != _identity(self.info)
        self.info = info
        return changed


class _Tail:
    """A stream's SUB socket on the live tail of one session, for the daemon :attr:`follows`."""

    def __init__(self, zctx: zmq.asyncio.Context, sid: str) -> None:
        self.zctx, self.sid = zctx, sid
        self.follows: tuple[Any, ...] | None = None
        self.sub: zmq.asyncio.Socket | None = None
        self.codec: Codec | None = None
        self.pending: asyncio.Future[list[bytes]] | None = None

    def switch(self, info: ConnectionInfo | None) -> None:
        """Follow ``info``'s daemon (None: none) from now on; subscribed before the caller reads the store."""
        self.close()
        self.follows = _identity(info)
        if info is None:
            return
        sub = events_socket(self.zctx, info)
        sub.setsockopt(zmq.RCVHWM, LIVE_RCVHWM)
        sub.setsockopt(zmq.SUBSCRIBE, f"session.{self.sid}".encode())
        sub.connect(info.events)
        self.sub, self.codec = sub, Codec(info.key_bytes)

    def receiving(self) -> asyncio.Future[list[bytes]] | None:
        """The pending receive (kept across waits: a message is never lost to a cancelled receive)."""
        if self.sub is None:
            return None
        if self.pending is None:
            self.pending = asyncio.ensure_future(self.sub.recv_multipart())  # zmq.asyncio: a Future already
        return self.pending

    def take(self) -> list[dict[str, Any]]:
        """The events of the message received (done :meth:`receiving`), in ``seq`` order; [] if unreadable."""
        assert self.pending is not None and self.codec is not None
        received, self.pending = self.pending, None
        try:
            return decode_live(self.codec, received.result()[1:])
        except zmq.ZMQError:  # the socket failed (closed under us): subscribe afresh, and read the store
            self.close()
            self.follows = ("failed",)
            return []
        except WireError:
            return []

    def close(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        if self.sub is not None:
            self.sub.close(0)
            self.sub = None


async def follow_session(sid: str, since: int, *, watch: DaemonWatch, zctx: zmq.asyncio.Context,
                         read: Callable[[int], Awaitable[dict[str, Any]]],
                         disconnected: Callable[[], Awaitable[bool]], ended: bool = False) -> AsyncIterator[str]:
    """The Server-Sent Events of session ``sid`` after ``since``: ``id: <seq>`` and the event as JSON, each event
    once and in order; ``event: end`` after the session's end; ``event: error`` while the daemon cannot be read,
    then ``event: resumed``. Returns without ``end`` when the server stops or the client has gone.

    ``read(since)``: a page of the session's stored events after ``since`` (``Client.events``), in a thread the
    stop may abandon (then it raises :class:`~labd.frontends.ui.calls.Stopping`, a :class:`LabdError`). ``ended``:
    the session had ended when it was looked up, before this stream read anything: if nothing is stored after
    ``since``, its end is at or before ``since`` (a page resuming from the last event it got) and the stream ends at
    once, rather than waiting for a ``session.ended`` that is not coming."""
    from labd.frontends.ui.calls import Stopping

    cursor = FollowCursor(since)
    tail = _Tail(zctx, sid)
    tail.follows = ("not yet",)  # the first pass subscribes (or finds no daemon)
    failing = False
    watch.register()
    try:
        yield "retry: 1000\n\n"
        need_store, recheck, last_live = True, RECHECK_FIRST_S, 0.0
        first_read = True
        while not cursor.ended:
            if watch.stopped or await disconnected():
                return  # not "end": the page reconnects (and resumes) when a dashboard serves again
            if tail.follows != _identity(watch.info):
                tail.switch(watch.info)  # first, or another daemon (or none): subscribe, then read the store
                need_store = True
            if need_store:
                before = cursor.last
                try:
                    async for chunk in _from_store(cursor, None, read, disconnected):
                        if failing:  # the daemon answers again (the page clears its notice even if no event comes)
                            failing = False
                            yield "event: resumed\ndata: {}\n\n"
                        if chunk:
                            yield chunk
                except Stopping:
                    return
                except _Gone:
                    return
                except LabdError as exc:
                    if exc.code == "not_found":  # deleted (labd rm, retention): reconnecting, the page gets a 404
                        return
                    failing = True
                    yield f"event: error\ndata: {json.dumps({'code': exc.code, 'message': exc.message})}\n\n"
                    await watch.pause(ERROR_RETRY_S)
                    continue
                need_store = False
                if first_read and ended and cursor.last == since:
                    break  # it ended at or before `since` (a resume would be in what was just read)
                first_read = False
                if cursor.last != before:  # the live tail had dropped some (or this is the start): watch closely
                    recheck = RECHECK_FIRST_S
                continue
            # idle: wait for a live message, a change the watch sees, or the time for a store check
            waker = watch.waker()
            receiving = tail.receiving()
            waits: set[asyncio.Future[Any]] = {waker} if receiving is None else {waker, receiving}
            try:
                done, _ = await asyncio.wait(waits, timeout=recheck, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waker.cancel()
            if receiving is None or receiving not in done:
                if not done:  # quiet: check that the live tail dropped nothing, then wait longer for the next
                    need_store, recheck = True, min(recheck * 2, RECHECK_MAX_S)
                continue
            now = asyncio.get_running_loop().time()
            if now - last_live < RECHECK_FIRST_S:  # dense traffic, where the tail drops: check a second after it
                recheck = RECHECK_FIRST_S
            last_live = now
            chunk_parts: list[str] = []
            try:
                for ev in tail.take():
                    upto = cursor.gap_before(ev)
                    if upto is not None:  # the live tail dropped some: read them from the store first
                        if chunk_parts:
                            yield "".join(chunk_parts)
                            chunk_parts = []
                        async for chunk in _from_store(cursor, upto, read, disconnected):
                            if chunk:
                                yield chunk
                    if cursor.live(ev):
                        chunk_parts.append(_sse(ev))
            except Stopping:
                return
            except _Gone:
                return
            except LabdError:
                need_store = True  # said (event: error) by the store read at the top of the loop
            if chunk_parts:
                yield "".join(chunk_parts)
        yield "event: end\ndata: {}\n\n"
    finally:
        watch.unregister()
        tail.close()


class _Gone(Exception):
    """The client went away while the stream replayed (noticed between two chunks)."""


def _sse(ev: dict[str, Any]) -> str:
    return f"id: {ev['seq']}\ndata: {json.dumps(ev, default=str)}\n\n"


async def _from_store(cursor: FollowCursor, upto: int | None, read: Callable[[int], Awaitable[dict[str, Any]]],
                      disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
    """Chunks of the stored events after the cursor (up to ``upto``), moving it; an empty chunk after the first
    page is read (the daemon answered). Raises :class:`_Gone` if the client went away between two chunks."""
    while True:
        page = await read(cursor.last)
        yield ""
        chunk: list[str] = []
        size = 0
        for ev in page["events"]:
            if upto is not None and ev["seq"] > upto:
                break
            if not cursor.stored(ev):
                continue
            chunk.append(_sse(ev))
            size += len(chunk[-1])
            if size >= STREAM_CHUNK:
                yield "".join(chunk)
                chunk, size = [], 0
                # a closed connection is noticed here (this lets the loop run), not after the whole page
                if await disconnected():
                    raise _Gone()
        if chunk:
            yield "".join(chunk)
        if not page["more"] or not page["events"] or (upto is not None and cursor.last >= upto):
            return

