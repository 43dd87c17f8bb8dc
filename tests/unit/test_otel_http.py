"""labd's OTLP/HTTP request (daemon/otel_http.py) and how the exporter starts and fails (a review of the
transport, 2026-12-07): header values, endpoints, a collector that refuses a body by closing on it, a cursor that
cannot be written."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from labd.daemon.otel_http import OtlpHttp, parse_endpoint


def test_a_header_value_ending_in_a_line_break_is_trimmed_and_one_inside_is_refused_unquoted() -> None:
    """A key read from a file with CRLF endings ends in ``\\r``: it is trimmed, not sent, not retried for ever. A
    line break inside a value is refused at once, and the message names the header, never its value (http.client
    quoted the whole value, which reached the log and ``labd status``)."""
    ok = OtlpHttp("http://127.0.0.1:9/v1/traces", {"x-team": "hcaik_SECRET_KEY_123\r"})
    assert ok.headers["x-team"] == "hcaik_SECRET_KEY_123"
    with pytest.raises(ValueError) as refused:
        OtlpHttp("http://127.0.0.1:9/v1/traces", {"x-team": "abc\r\nX-Evil: 1"})
    assert "x-team" in str(refused.value) and "abc" not in str(refused.value)


@pytest.mark.parametrize(("url", "want"), [
    ("http://[::1]/v1/traces", ("http", "::1", 80, "/v1/traces", None)),
    ("https://collector.example/v1/traces?a=b", ("https", "collector.example", 443, "/v1/traces?a=b", None)),
    ("http://u%40x:p%3Aw@h:4318", ("http", "h", 4318, "/", "u@x:p:w")),
])
def test_endpoints_parse_with_default_ports_and_logins(url: str, want: tuple[Any, ...]) -> None:
    """An IPv6 literal without a port gets the scheme's (http.client split it on its last colon and dialled
    ``":"``, port 1); a login in the URL is basic authentication, decoded."""
    assert parse_endpoint(url) == want


@pytest.mark.parametrize(("url", "says"), [
    ("http://localhost:43l8", "port"), ("http://", "no host"), ("ftp://h/x", "http"), ("https://user@:4318", "no host"),
])
def test_a_bad_endpoint_is_refused_by_the_config_check(tmp_path: Path, url: str, says: str) -> None:
    """``labd serve --check`` said OK to a port of ``43l8``, and the daemon then ended at start with a traceback.
    The check now parses the whole URL, and says what is wrong without quoting it (it may hold a password)."""
    from labd.daemon.config import ConfigError
    from labd.daemon.config_tables import check_telemetry

    with pytest.raises(ValueError) as refused:
        parse_endpoint(url)
    assert says in str(refused.value)
    if url.startswith(("http://", "https://")):
        with pytest.raises(ConfigError, match="otlp_endpoint"):
            check_telemetry(tmp_path / "config.toml", {"otlp_endpoint": url})


def test_a_collector_that_refuses_a_large_body_by_closing_on_it_is_told_apart() -> None:
    """A collector (Go's, some proxies) answers 413 to a large body and closes without reading the rest: the
    sending fails with a reset. The answer is read if it came, else the request ends as ``reset`` (which the
    exporter splits), not as a plain retry of the same batch for ever."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    answers = [b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", b""]

    def serve() -> None:
        for answer in answers:
            conn, _ = server.accept()
            conn.recv(4096)  # the headers, a little of the body
            if answer:
                conn.sendall(answer)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()  # with most of the body unread: a reset

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        http = OtlpHttp(f"http://127.0.0.1:{port}/v1/traces", timeout=10)
        outcomes = [http.post(b"x" * (8 << 20)).outcome for _ in answers]
        assert outcomes[0] in ("too_large", "reset") and outcomes[1] == "reset", outcomes
    finally:
        t.join(10)
        server.close()


def test_the_exporter_backs_off_when_its_cursor_cannot_be_written(tmp_path: Path) -> None:
    """A full disk under ``otel-export.db``: the pass that cannot record its progress counts a failure, says why
    in ``last_error`` and waits longer before the next pass (the same spans were posted every interval)."""
    from labd.daemon.otel_export import OtelExporter
    from labd.store.db import migrate, open_engine
    from labd.store.writer import BatchWriter
    from tests.unit.test_otel_clamp import FakeCollector
    from tests.unit.test_store import CREATED, Batch

    engine = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    migrate(engine)
    writer = BatchWriter(engine)
    exporter = OtelExporter(engine, "http://127.0.0.1:9", tmp_path / "otel-export.db", interval=0.2)
    exporter.http = FakeCollector()  # type: ignore[assignment]
    try:
        b = Batch({})
        b.add("s1", "session.created", CREATED, ts=1000.0)
        b.add("s1", "session.ended", {"ended_by": "runner", "exit_code": 0, "status": "completed"}, ts=1001.0)
        b.commit(writer)

        def full(*_: Any) -> None:
            import sqlite3

            raise sqlite3.OperationalError("database or disk is full")

        exporter.cursor.move = full  # type: ignore[method-assign]
        assert not exporter.export_pass()
        assert exporter.failures == 1 and "disk is full" in (exporter.last_error or "") and exporter._wait > 0.2
        assert not exporter.export_pass() and exporter._wait >= 0.8  # doubling
        exporter.cursor.close()
    finally:
        writer.close()
        engine.dispose()


def test_telemetry_that_cannot_start_leaves_the_daemon_serving(tmp_path: Path) -> None:
    """An exporter that cannot open its cursor (a home it cannot write: here, a path under a file) is logged and left
    off: ``start_telemetry`` returns None instead of raising out of the daemon's start."""
    from labd.daemon.config import load_config
    from labd.daemon.services import start_telemetry
    from labd.store.db import open_engine

    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[telemetry]\notlp_endpoint = "http://127.0.0.1:9"\n')
    cfg = load_config(home)
    broken = tmp_path / "not-a-directory"  # where the cursor would go: neither opened nor made anew
    broken.write_text("")
    engine = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    try:
        assert start_telemetry(cfg, engine, broken) is None
    finally:
        engine.dispose()


def test_opentelemetrys_own_header_variables_are_read() -> None:
    """``OTEL_EXPORTER_OTLP_HEADERS`` (and the traces' variant, which wins) as the SDK's exporter read them:
    ``k=v`` pairs, URL-encoded values."""
    from labd.daemon.services import otel_env_headers

    env = {"OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%20b, x-team=one",
           "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-team=two"}
    assert otel_env_headers(env) == {"api-key": "a b", "x-team": "two"}


def test_gzip_compression_and_the_timeout_are_read_as_opentelemetry_gives_them() -> None:
    """``OTEL_EXPORTER_OTLP_COMPRESSION=gzip`` sends bodies gzip-compressed with ``Content-Encoding: gzip`` (the
    collector gets the same bytes back); ``none`` or unset sends them as they are; ``OTEL_EXPORTER_OTLP_TIMEOUT`` is
    milliseconds. Neither was read: a collector behind a link that charges by the byte got bodies six times larger,
    and a collector's own timeout setting had no effect."""
    import gzip
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from labd.daemon.otel_http import parse_compression, parse_timeout

    got: list[tuple[str | None, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            got.append((self.headers.get("Content-Encoding"), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        body = b"span " * 2000
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        for value in ("gzip", "none", None):
            assert OtlpHttp(url, gzip=parse_compression(value)).post(body).outcome == "ok"
        (enc, sent), (plain_enc, plain), (unset_enc, unset) = got
        assert enc == "gzip" and len(sent) < len(body) // 10 and gzip.decompress(sent) == body
        assert (plain_enc, plain) == (unset_enc, unset) == (None, body)
    finally:
        server.shutdown()
        server.server_close()
    assert parse_compression(" GZIP ") is True
    with pytest.raises(ValueError, match="not gzip or none"):
        parse_compression("zstd")
    assert parse_timeout("2500") == 2.5 and parse_timeout(None) == 10.0 and parse_timeout("") == 10.0
    for bad in ("abc", "0", "-5", "inf", "nan"):
        with pytest.raises(ValueError):
            parse_timeout(bad)


def test_a_bad_compression_setting_leaves_export_off_and_the_daemon_serving(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``OTEL_EXPORTER_OTLP_TRACES_COMPRESSION=brotli`` (not a value OpenTelemetry has): the exporter does not start,
    and ``start_telemetry`` returns None (logged) rather than raising out of the daemon's start; a good one for
    traces wins over a bad general one, as the traces' variant does."""
    from labd.daemon.config import load_config
    from labd.daemon.services import start_telemetry
    from labd.store.db import open_engine

    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[telemetry]\notlp_endpoint = "http://127.0.0.1:9"\n')
    engine = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "brotli")
        assert start_telemetry(load_config(home), engine, home) is None
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1500")
        exporter = start_telemetry(load_config(home), engine, home)
        assert exporter is not None and exporter.http.gzip and exporter.http.timeout == 1.5
        exporter.stop()
        exporter.join(10)
    finally:
        engine.dispose()
