"""The OTLP exporter's connection is kept between requests (daemon/otel_http.py): an export of a long session is
thousands of requests, and each opened a TCP connection (over https, also a TLS handshake) of its own. Pinned
here against a loopback HTTP/1.1 collector: one connection for many requests, a new one when the collector closes
it (said or not), and nothing lost or failed when the collector drops an idle connection between two requests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from labd.daemon import otel_http
from labd.daemon.otel_http import OtlpHttp
from tests.conftest import wait_until


class Collector:
    """A loopback HTTP/1.1 server answering each POST 200, counting connections and requests. ``mode``:
    ``keep`` (keeps the connection open), ``say_close`` (answers with ``Connection: close``), ``drop_idle`` (keeps
    it open for the answer, then closes it without a word, as a collector's idle timeout does), ``drop_on_next``
    (closes it without an answer when the next request arrives: the idle timeout racing that request)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections = 0
        self.ended = 0  # connections the client closed
        self.requests: list[bytes] = []
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        self.ended += 1
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                while len(buf) < length:
                    buf += conn.recv(65536)
                self.requests.append(buf[:length])
                buf = buf[length:]
                said = b"Connection: close\r\n" if self.mode == "say_close" else b""
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + said + b"\r\n")
                if self.mode == "drop_on_next":
                    conn.recv(65536)  # the next request (or the client's close): dropped unanswered
                if self.mode != "keep":
                    return

    def close(self) -> None:
        self.server.close()


@contextmanager
def collector(mode: str) -> Iterator[tuple[Collector, OtlpHttp]]:
    c = Collector(mode)
    http = OtlpHttp(f"http://127.0.0.1:{c.port}/v1/traces", timeout=10)
    try:
        yield c, http
    finally:
        http.close()
        c.close()


def test_many_requests_share_one_connection() -> None:
    """Ten batches to a collector that keeps its connections open: ten answers, one connection opened."""
    with collector("keep") as (c, http):
        outcomes = [http.post(b"batch %d" % i).outcome for i in range(10)]
        assert outcomes == ["ok"] * 10
        assert c.requests == [b"batch %d" % i for i in range(10)]
        assert c.connections == 1 and http.connections == 1


@pytest.mark.parametrize("mode", ["say_close", "drop_idle", "drop_on_next"])
def test_a_connection_the_collector_closes_is_not_reused_and_no_batch_fails(mode: str) -> None:
    """A collector that answers ``Connection: close``, or closes an idle connection without a word (its idle
    timeout): every batch is still taken at the first try (none answered ``retry``, none sent twice), on a new
    connection each. ``drop_idle`` is the stale case: the kept connection's request fails and is sent again on a
    new one within the same ``post``; ``drop_on_next`` the race where the request was sent and the collector closes
    without answering it."""
    with collector(mode) as (c, http):
        for i in range(5):
            answer = http.post(b"batch %d" % i)
            assert answer.outcome == "ok", answer
            # the server's side of the close has been seen before the next request (the stale case for drop_idle)
        assert c.requests == [b"batch %d" % i for i in range(5)]
        assert c.connections == 5


def test_a_connection_idle_for_long_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``KEEP_IDLE_S`` the kept connection is closed and a new one opened (collectors close idle ones)."""
    monkeypatch.setattr(otel_http, "KEEP_IDLE_S", 0.0)
    with collector("keep") as (c, http):
        assert [http.post(b"x").outcome for _ in range(3)] == ["ok"] * 3
        assert c.connections == 3 and http.connections == 3


def test_close_ends_the_kept_connection_and_refuses_new_requests() -> None:
    """The daemon stopping: ``close()`` closes the kept connection (the collector sees its end) and the next
    ``post`` is a ``retry`` without sending anything."""
    with collector("keep") as (c, http):
        assert http.post(b"x").outcome == "ok"
        http.close()
        wait_until(lambda: c.ended == 1, timeout=10, what="the collector to see the kept connection end")
        answer = http.post(b"y")
        assert answer.outcome == "retry" and "stopping" in answer.message
        assert c.requests == [b"x"]
