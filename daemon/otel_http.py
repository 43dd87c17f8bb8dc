"""One OTLP/HTTP request at a time, with bounds a collector cannot push past: labd's own transport for the exporter.

The OpenTelemetry SDK's exporter posts through ``requests``, which reads a whole response into memory and applies
its timeout to each read, not to the request: a collector answering an endless body grew the daemon by 250 MB a
second, one sending a byte every few seconds held the export (and the daemon's shutdown) for ever, and a redirect
counted as success (the SDK accepts every status below 400), so spans were dropped without a word. Here:

- one deadline for the whole request (connect, send, headers, body), and :meth:`OtlpHttp.close` from another
  thread ends a request in progress (the daemon stopping);
- at most :data:`MAX_RESPONSE` bytes of a response are read, the rest is dropped with the connection;
- the connection is kept for the next request (HTTP/1.1 keep-alive) while the collector keeps it open and its answer
  was read to the end; a kept connection the collector closed meanwhile is retried once on a new one;
- the status decides: 2xx is an answer (with OTLP's ``partial_success``: spans the collector rejected), 413 means
  the batch is too large (the caller splits it), 400 means this batch will never be taken (the caller skips it),
  anything else — 3xx, 401/403/404, 429, 5xx, a network error — means try again later, after ``Retry-After`` when
  the collector gave one.
"""

from __future__ import annotations

import base64
import gzip as gzip_format
import http.client
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import NamedTuple

__all__ = ["Answer", "OtlpHttp", "TlsFiles", "parse_endpoint", "parse_compression", "parse_timeout", "MAX_RESPONSE",
           "MAX_RETRY_AFTER"]

MAX_RESPONSE = 64 << 10  # bytes of a collector's answer that are read (an OTLP answer is a few bytes)
MAX_RETRY_AFTER = 300.0  # seconds: the longest Retry-After followed (a collector cannot park the export for days)
KEEP_IDLE_S = 30.0  # a connection idle longer is not reused but closed (collectors close idle ones when they like)


@dataclass(frozen=True)
class Answer:
    """What became of one request. ``outcome``: ``ok`` (taken; ``rejected`` spans of it refused by the collector),
    ``too_large`` (413), ``refused`` (400: this batch is never taken), ``reset`` (the connection was closed while
    the body was sent, with no answer: a collector refusing a large body does that; split it if it can be),
    ``retry`` (anything else)."""

    outcome: str
    message: str = ""
    rejected: int = 0
    retry_after: float | None = None


class OtlpHttp:
    """POSTs protobuf bodies to one OTLP/HTTP traces URL. One request at a time (the exporter's thread)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 10.0, *,
                 tls: TlsFiles | None = None, gzip: bool = False) -> None:
        self.scheme, self.host, self.port, self.path, login = parse_endpoint(url)
        self.headers = {"Content-Type": "application/x-protobuf"}
        self.gzip = gzip  # bodies sent gzip-compressed (OTEL_EXPORTER_OTLP_COMPRESSION=gzip)
        if gzip:
            self.headers["Content-Encoding"] = "gzip"
        for name, value in (headers or {}).items():
            value = value.strip()  # a key read from a file with CRLF endings ends in \r: not part of it
            if any(c in value for c in "\r\n\0") or any(c in name for c in "\r\n\0: "):
                # http.client refuses it with the whole value in its message, which would reach the log and status
                raise ValueError(f"header {name!r} holds a line break or NUL: not sent (its value is not shown)")
            self.headers[name] = value
        if login is not None:  # user:password@host, as requests sent it: basic authentication
            self.headers.setdefault("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        if self.scheme == "https" and tls is not None and any(tls):
            self._context = ssl.create_default_context(cafile=tls.ca)
            if tls.cert:
                self._context.load_cert_chain(tls.cert, tls.key)
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None  # kept open for the next request (keep-alive)
        self._kept_at = 0.0
        self._inflight: http.client.HTTPConnection | None = None
        self._closed = False
        self.connections = 0  # connections opened so far (each a TCP and, over https, a TLS handshake)

    def close(self) -> None:
        """End a request in progress (from any thread) and refuse new ones: the daemon is stopping."""
        with self._lock:
            self._closed = True
            kept, self._conn = self._conn, None
            inflight = self._inflight
        _abort(inflight)
        if kept is not None:
            kept.close()

    def post(self, body: bytes) -> Answer:
        """Send ``body``; never raises for what the network or the collector does. The connection is kept for the
        next request while the collector keeps it open (HTTP/1.1 keep-alive): an export of a long session is
        thousands of requests, each a TCP and, over https, a TLS handshake of its own before."""
        if self.gzip:
            body = gzip_format.compress(body, compresslevel=6)
        deadline = time.monotonic() + self.timeout
        with self._lock:
            kept, self._conn = self._conn, None
            closed = self._closed
        if kept is not None and (closed or time.monotonic() - self._kept_at > KEEP_IDLE_S):
            kept.close()  # idle for long: the collector has likely closed it (Go's servers do after 90 s)
            kept = None
        if closed:
            return Answer("retry", "the exporter is stopping")
        if kept is not None:
            answer = self._send(kept, body, deadline, reused=True)
            if answer is not None:
                return answer
            # the collector had closed the kept connection meanwhile (it failed at once): once more, on a new one,
            # with a whole deadline of its own (what was left of the first could end it before its connect)
            deadline = time.monotonic() + self.timeout
        return self._send(self._new(), body, deadline, reused=False) or Answer("retry", "collector unreachable")

    def _new(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _send(self, conn: http.client.HTTPConnection, body: bytes, deadline: float, *,
              reused: bool) -> Answer | None:
        """One request on ``conn``; None when ``reused`` and the collector had closed it before answering (to be
        sent again on a new connection: a collector closes an idle keep-alive connection when it likes)."""
        with self._lock:
            if self._closed:
                conn.close()
                return Answer("retry", "the exporter is stopping")
            self._inflight = conn
        keep = False
        # The deadline holds for every phase: a socket timeout is per read, and a collector that sends its status
        # line or headers a byte at a time would reset it for ever. At the deadline the socket is shut down.
        timer = threading.Timer(max(deadline - time.monotonic(), 0.0), _abort, (conn,))
        timer.daemon = True
        timer.start()
        try:
            if not reused:
                conn.connect()
                if self._closed:  # close() ran while connecting, with no socket yet to shut down
                    return Answer("retry", "the exporter is stopping")
            if time.monotonic() >= deadline:  # the timer fired while connecting, with no socket to shut down yet
                raise TimeoutError("deadline")
            try:
                conn.request("POST", self.path, body=body, headers=self.headers)
            except OSError as sending:  # the collector may have answered (413) and closed without reading it all
                try:
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    if reused:
                        return None
                    return Answer("reset", f"collector closed the connection while {len(body)} bytes were sent: "
                                  f"{type(sending).__name__}")
            else:
                resp = conn.getresponse()
            data = _read(resp, deadline)
            if resp.length == 0:  # read to its end: read1 leaves an answer of a known length open at its end
                resp.close()
            # kept only when the answer was read to its end and the collector keeps the connection open
            keep = resp.isclosed() and not resp.will_close
            return _answer(resp.status, resp.reason, resp.getheader("Retry-After"), resp.getheader("Location"), data)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            late = time.monotonic() >= deadline
            if reused and not late and isinstance(exc, (ConnectionError, http.client.BadStatusLine)):
                return None  # closed by the collector while idle (RemoteDisconnected is both of these)
            # the type only for a ValueError: http.client's messages quote what it refused (a header's value)
            reason = f"no answer within {self.timeout:g} s" if late else type(exc).__name__ if isinstance(
                exc, ValueError) else f"{type(exc).__name__}: {exc}"
            return Answer("retry", f"collector unreachable: {reason}"[:300])
        finally:
            timer.cancel()
            with self._lock:
                self._inflight = None
                self.connections += not reused
                keep = keep and not self._closed
                if keep:
                    self._conn, self._kept_at = conn, time.monotonic()
            if not keep:
                conn.close()


class TlsFiles(NamedTuple):
    """Files of a TLS connection to the collector: the CA bundle to trust, the client's certificate and key (mTLS)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


def parse_endpoint(url: str) -> tuple[str, str, int, str, str | None]:
    """``(scheme, host, port, path with query, "user:password" or None)`` of an http(s) URL; ValueError saying
    what is wrong with it (the URL itself is not quoted: it may hold a password)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("no host name")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("its port is not a number from 0 to 65535") from None
    port = port or (443 if parts.scheme == "https" else 80)  # an IPv6 literal without one: http.client would split it
    login = None
    if parts.username is not None:
        login = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return parts.scheme, parts.hostname, port, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), login


def parse_compression(value: str | None) -> bool:
    """``OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION``: True for ``gzip``; ``none`` or unset: False; ValueError for
    anything else (the SDK's exporter takes these two)."""
    text = (value or "none").strip().lower()
    if text not in ("gzip", "none", ""):
        raise ValueError(f"compression {value!r} is not gzip or none")
    return text == "gzip"


def parse_timeout(value: str | None, default: float = 10.0) -> float:
    """``OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT``: milliseconds, as the OpenTelemetry specification has them, to the
    seconds one request may take (``default`` when unset); ValueError for what is not a positive number."""
    if value is None or not value.strip():
        return default
    try:
        ms = float(value)
    except ValueError:
        raise ValueError(f"timeout {value!r} is not a number of milliseconds") from None
    if not 0 < ms < float("inf"):
        raise ValueError(f"timeout {value!r} must be a positive number of milliseconds")
    return ms / 1000.0


def _abort(conn: http.client.HTTPConnection | None) -> None:
    """Shut the connection's socket down: a thread blocked reading or writing it returns at once."""
    sock = conn.sock if conn is not None else None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _read(resp: http.client.HTTPResponse, deadline: float) -> bytes:
    """At most :data:`MAX_RESPONSE` bytes of the body, within the deadline."""
    chunks: list[bytes] = []
    got = 0
    while got < MAX_RESPONSE:
        if time.monotonic() >= deadline:
            raise TimeoutError("deadline")
        chunk = resp.read1(min(16384, MAX_RESPONSE - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _answer(status: int, reason: str, retry_after: str | None, location: str | None, data: bytes) -> Answer:
    if 200 <= status < 300:
        return Answer("ok", rejected=_rejected(data))
    said = f"collector answered {status} {reason}".strip()
    if status == 413:
        return Answer("too_large", said)
    if status == 400:
        return Answer("refused", f"{said}: {_text(data)}" if data else said)
    if 300 <= status < 400:
        said += f" (a redirect to {location!r}: not followed, set otlp_endpoint to where it leads)"
    return Answer("retry", said[:300], retry_after=_retry_after(retry_after))


def _rejected(data: bytes) -> int:
    """Spans an OTLP answer says it rejected (``partial_success.rejected_spans``); 0 for an empty or other answer."""
    if not data:
        return 0
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        answer = ExportTraceServiceResponse()
        answer.ParseFromString(data)
        return max(int(answer.partial_success.rejected_spans), 0)
    except Exception:  # noqa: BLE001 - an answer that is not OTLP (a proxy's page) is a plain success
        return 0


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` (seconds, or an HTTP date) as seconds from now, at most :data:`MAX_RETRY_AFTER`."""
    if not value:
        return None
    try:
        secs = float(value)
    except ValueError:
        try:
            secs = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    if secs != secs:  # NaN
        return None
    return min(max(secs, 0.0), MAX_RETRY_AFTER)


def _text(data: bytes) -> str:
    return data[:200].decode("utf-8", "replace").replace("\n", " ")
