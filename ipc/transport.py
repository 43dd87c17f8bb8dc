"""The conversation with the daemon under every :class:`labd.ipc.client.Client` call: the connection (local, or a
remote daemon over TCP with CurveZMQ), one request and its reply (signed, in parts when large, retried while the
daemon is ``busy`` with replies other clients have not read), and what is refused before anything is sent.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Self

import zmq

from labd.ipc.connection import (
    BadConnectionFile,
    ConnectionFileError,
    ConnectionInfo,
    UnsafeConnectionFile,
    client_socket,
    daemon_alive,
    read_connection_file,
)
from labd.ipc.errors import LabdError, check_timeout
from labd.ipc.gcpause import gc_paused
from labd.ipc.parts import PART_TYPE, PartError, Reassembly
from labd.ipc.paths import layout_for
from labd.ipc.wire import DEFAULT_MAX_MESSAGE, Codec, PayloadError, WireError, json_int, non_finite

__all__ = ["Transport", "BUSY_FIRST", "BUSY_MOST"]

#: a request refused ``busy`` for replies other clients have not read is sent again after this many seconds,
#: doubling up to BUSY_MOST, until the client's timeout (Client.request)
BUSY_FIRST = 0.05
BUSY_MOST = 1.0


class Transport:
    """A connection to the daemon serving ``home`` (default: ``$LABD_HOME`` or the XDG data dir), and
    :meth:`request`. :class:`labd.ipc.client.Client` is the API on top of it."""

    def __init__(self, home: str | os.PathLike[str] | None = None, *, timeout: float = 15.0,
                 connection_file: str | os.PathLike[str] | None = None, restart_wait: float = 0.0) -> None:
        """``connection_file`` (or ``$LABD_CONNECTION_FILE``): a file from ``labd remote add`` for a daemon on
        another machine, reached over TCP with CurveZMQ; otherwise the local daemon of ``home``. ``timeout``: how
        long a request waits for its reply, in seconds (``math.inf``: as long as it takes; see
        :func:`check_timeout`). ``restart_wait``: see :attr:`restart_wait`."""
        limit = check_timeout(timeout)
        wait_limit = check_timeout(restart_wait)
        self.layout = layout_for(home)
        self.timeout = math.inf if limit is None else limit
        remote = connection_file or os.environ.get("LABD_CONNECTION_FILE") or None
        try:
            self.info: ConnectionInfo = read_connection_file(self.layout, Path(remote) if remote else None)
        except UnsafeConnectionFile as exc:
            raise LabdError("unsafe_runtime_dir", str(exc)) from None
        except BadConnectionFile as exc:
            raise LabdError("bad_connection_file", str(exc)) from None
        except ConnectionFileError as exc:
            raise LabdError("no_daemon", str(exc)) from None
        #: the daemon is on this machine: its pid can be checked (a remote one is only known by its replies)
        self.local = remote is None
        self._remote_file = remote
        if self.local and not daemon_alive(self.info):  # killed or crashed: fail now, not after a reply timeout
            raise LabdError("no_daemon", f"the labd daemon of home {self.layout.home} (pid {self.info.pid}) is not "
                            "running: it stopped without removing its connection file (killed or crashed); "
                            "start one with `labd serve`", {"pid": self.info.pid, "stale": True})
        self._codec = Codec(self.info.key_bytes)
        #: the largest request the daemon reads (connection file ``max_message``): a larger one is refused here,
        #: as the daemon would (or, past twice that, libzmq would drop it and no reply ever come)
        self.max_request = self.info.max_message or DEFAULT_MAX_MESSAGE
        #: how long a waiting call with no deadline of its own (:meth:`result`, :meth:`wait`, :meth:`follow` without
        #: ``timeout``) waits for a daemon to serve again after the one it talked to stopped (``labd shutdown``
        #: then ``labd serve``: the sessions survive, the new daemon adopts them). 0 (the default): it fails at
        #: once with ``no_daemon`` naming the session, as ``labd run --follow`` reports. A call with a ``timeout``
        #: waits for a daemon up to its own deadline.
        self.restart_wait = math.inf if wait_limit is None else wait_limit
        #: how many times this client moved to a restarted daemon (:meth:`reconnect`)
        self._generation = 0
        #: one exchange on the control socket at a time: a libzmq socket used from two threads at once aborts the
        #: whole process (``Assertion failed: pfd.revents & POLLIN``), and sharing a client between threads is what
        #: a script does first (power-user review); requests from several threads take turns
        self._lock = threading.RLock()
        self._ctx = zmq.Context()
        self._sock = self._socket(zmq.DEALER)
        try:
            self._sock.connect(self.info.control)
        except zmq.ZMQError as exc:  # an endpoint libzmq refuses (a connection file edited by hand: a bad port)
            self.close()
            raise LabdError("bad_connection_file", f"cannot connect to {self.info.control!r} (from "
                            f"{self._remote_file or 'the connection file of home ' + str(self.layout.home)}): "
                            f"{exc.strerror}") from None

    def _socket(self, kind: int) -> zmq.Socket:
        """A socket to the daemon: CurveZMQ-encrypted when the connection file carries keys (TCP)."""
        return client_socket(self._ctx, self.info, kind)  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            self._sock.close(0)
        self._ctx.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- raw requests -----------------------------------------------------------------------------
    def request(self, type_: str, **body: Any) -> Any:
        """Send one request and return its result; raise :class:`LabdError` on an error reply or timeout, and
        before sending: ``bad_request`` (``bad_limits`` in ``limits``) for a NaN or ±Infinity anywhere in ``body``,
        ``request_too_large`` for a request over the daemon's message limit; ``bad_request`` too for what JSON cannot
        carry (a string with a lone surrogate, ``"\\ud800"``; a value nested deeper than 255 levels).

        A ``busy`` reply saying the daemon holds too many bytes of replies other clients have not read
        (``details.in_flight``) is retried, :data:`BUSY_FIRST` s apart doubling to :data:`BUSY_MOST` s, within this
        client's timeout. That is safe for any request: the daemon refuses so only replies to requests that changed
        nothing (reads, refusals); a write's reply is always sent (docs/protocol.md §4.2)."""
        deadline = time.monotonic() + self.timeout
        pause = BUSY_FIRST
        while True:
            try:
                return self._request_once(type_, body, deadline)
            except LabdError as exc:
                if exc.code != "busy" or "in_flight" not in exc.details or deadline - time.monotonic() <= pause:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, BUSY_MOST)

    def keyed_request(self, type_: str, body: dict[str, Any], key: str | None, retries: int) -> Any:
        """:meth:`request` for a request that changes something once (a start, a skill save): it carries an
        idempotency key (``key``, else a fresh random one) and is re-sent unchanged ``retries`` times when no reply
        comes in time; the daemon answers a retry with what the first attempt did, so it is never done twice."""
        body["idempotency_key"] = key or secrets.token_hex(16)
        for attempt in range(retries + 1):
            try:
                return self.request(type_, **body)
            except LabdError as exc:
                if exc.code == "bad_request" and exc.details.get("field") == "idempotency_key" and key is None:
                    # a daemon older than keys on this request: once, as it was sent then (no retry: unkeyed, a
                    # retry could do it twice)
                    del body["idempotency_key"]
                    return self.request(type_, **body)
                if exc.code != "timeout":
                    raise
                if attempt == retries:
                    raise LabdError("timeout", f"{exc.message}; sent {attempt + 1} times with one idempotency key: "
                                    "it may still be carried out, once (look before sending it again)",
                                    exc.details) from None
        raise AssertionError("unreachable")

    def _timed_out(self) -> LabdError:
        where = (f"home {self.layout.home}" if self.local else
                 f"connection file {self._remote_file}; a revoked or unknown client key gets no reply")
        return LabdError("timeout", f"no reply from the daemon within {self.timeout:g}s (is it running? {where})")

    def _request_once(self, type_: str, body: dict[str, Any], deadline: float) -> Any:
        """Send ``type_`` once (a fresh id) and wait for its reply until ``deadline`` (monotonic)."""
        try:
            frames = self._codec.pack(type_, body, parts=True, exact_ints=True)
        except PayloadError as exc:
            raise LabdError("bad_request", f"the request cannot be sent: {exc}") from None
        except TypeError as exc:  # orjson's JSONEncodeError: e.g. a str that is not valid UTF-8
            raise _unencodable(body, exc) from None
        _check_request(frames[1], body, self.max_request)
        with self._lock:
            try:
                return self._exchange(frames, deadline)
            except LabdError as exc:
                # A request that got no reply may still sit in the socket's queue, unsent: libzmq would deliver it to
                # the next daemon listening at the same endpoint (a `labd serve` after the failure), which would then
                # run a session the caller was told had failed, and retried. A new socket leaves nothing queued.
                if exc.code in ("no_daemon", "timeout"):
                    self._renew_socket()
                raise

    def _no_daemon(self) -> LabdError:
        return LabdError("no_daemon", f"the labd daemon of home {self.layout.home} (pid {self.info.pid}) stopped "
                         "before it replied", {"pid": self.info.pid})

    def _renew_socket(self) -> None:
        """Replace the control socket with a new one connected to the same daemon, dropping what the old one held."""
        self._sock.close(0)
        self._sock = self._socket(zmq.DEALER)
        self._sock.connect(self.info.control)

    def _exchange(self, frames: list[bytes], deadline: float) -> Any:
        """Send one packed request and wait for its reply until ``deadline``."""
        # A socket with no connection to send on (a remote client whose key was revoked: each reconnection is
        # refused) blocked in send for good, past the client's timeout: sent only once it can be, within it.
        try:
            if not self._sock.poll(max(0, int((deadline - time.monotonic()) * 1000)), zmq.POLLOUT):
                raise self._timed_out()
            self._sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            raise self._timed_out() from None
        sent_id = _id_of(frames[1])
        parts = Reassembly()  # a reply over one message comes in parts (labd.ipc.parts)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timed_out()
            if not self._sock.poll(int(min(left, 0.5) * 1000)):
                if self.local and not daemon_alive(self.info):  # it died meanwhile: no reply will ever come
                    raise self._no_daemon()
                continue
            try:
                with gc_paused():  # a page of events is thousands of containers (labd.ipc.gcpause)
                    msg = self._codec.unpack(self._sock.recv_multipart())
                    if msg.re != sent_id:
                        continue  # a late reply to an earlier request that timed out
                    reply = msg.body if msg.type != PART_TYPE else parts.add(msg)
            except WireError:
                continue
            except PartError as exc:
                raise LabdError("bad_reply", f"a reply in parts could not be read: {exc}") from None
            if reply is None:
                continue  # more parts to come
            if reply.get("ok"):
                return reply.get("result")
            err = reply.get("error") or {}
            raise LabdError(err.get("code", "error"), err.get("message", "unknown error"), err.get("details"))


def _check_request(raw: bytes, body: dict[str, Any], limit: int) -> None:
    """Refuse what the daemon could not be sent: a non-finite number (JSON has none: orjson writes ``null``, which
    the daemon reads as absent, e.g. a NaN budget as no budget at all), or more than ``limit`` bytes."""
    if b"null" in raw:  # NaN and ±Infinity are encoded as null: only then is the body searched for them
        found = non_finite(body)
        if found is not None:
            path, value = found
            raise LabdError("bad_limits" if path.startswith("limits.") else "bad_request",
                            f"field {path!r} is {value}: a request carries only finite numbers (JSON has no NaN or "
                            "Infinity; it would arrive as null, i.e. absent)", {"field": path})
    if len(raw) > limit:
        raise LabdError("request_too_large", f"the request would be {len(raw)} bytes, over the daemon's {limit}-byte "
                        "message limit (max_message); send less: large inputs belong in files the workflow reads",
                        {"bytes": len(raw), "max": limit})


def _unencodable(body: dict[str, Any], exc: TypeError) -> LabdError:
    """``bad_request`` for a request body JSON cannot encode, naming the field when it is a string that is not valid
    UTF-8 (a lone surrogate, as ``"\\ud800"`` or bytes decoded with ``surrogateescape`` leave)."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:  # only on this error: the first string (or key) that does not encode
        value, path = stack.pop()
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError as bad:
                return LabdError("bad_request", f"field {path!r} is not valid text: {bad.reason} at character "
                                 f"{bad.start} ({value[bad.start]!r}); a request carries only strings that encode "
                                 "as UTF-8", {"field": path})
        elif isinstance(value, int) and not isinstance(value, bool) and not json_int(value):
            shown = str(value) if value.bit_length() <= 100 else f"an integer of {value.bit_length():,} bits"
            return LabdError("bad_request", f"field {path!r} is {shown}, past 64 bits: a request carries integers of "
                             "at most 64 bits", {"field": path})
        elif isinstance(value, dict):
            for k, v in reversed(list(value.items())):
                name = k.encode("utf-8", "backslashreplace").decode() if isinstance(k, str) else str(k)
                where = f"{path}.{name}" if path else name
                stack.extend([(v, where), (k, f"{where} (its name)")] if isinstance(k, str) else [(v, where)])
        elif isinstance(value, list | tuple):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(value))))
    return LabdError("bad_request", f"the request cannot be encoded as JSON: {exc}")


def _id_of(raw: bytes) -> str:
    import orjson

    return str(orjson.loads(raw)["id"])

