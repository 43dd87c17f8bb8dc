"""What keeping the OTLP connection costs and saves: labd's exporter transport (daemon/otel_http.py) posting batches
to a loopback HTTP/1.1 collector, over http and over https (a self-signed certificate made with openssl), with the
connection kept between requests (keep-alive, the default) and with a new connection per request (as before
2026-12-07: ``KEEP_IDLE_S = 0`` makes every request open one), alternated in rounds in one run.

Prints requests per second, the CPU per request of this process (the exporter's side: TCP and TLS handshakes
included) and the ratio kept / new per scheme. Nothing asserts on timing.

    .venv/bin/python scripts/bench_otlp.py [--requests 300] [--rounds 3] [--body-kib 64]
"""

from __future__ import annotations

import argparse
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench_common import print_machine, print_table, ratio

from labd.daemon import otel_http
from labd.daemon.otel_http import OtlpHttp, TlsFiles


class _Answer(BaseHTTPRequestHandler):
    """200 to every POST, the connection kept (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:  # no line per request
        pass


def _collector(context: ssl.SSLContext | None) -> int:
    """A loopback HTTP/1.1 collector (the standard library's, a thread per connection) in a thread; its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


def _certificate(where: Path) -> tuple[str, str]:
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return str(cert), str(key)


def _round(url: str, tls: TlsFiles | None, body: bytes, n: int, keep: bool) -> tuple[float, float, int]:
    """(seconds, CPU seconds of this process, connections opened) for ``n`` posts."""
    otel_http.KEEP_IDLE_S = 30.0 if keep else 0.0
    http = OtlpHttp(url, timeout=10, tls=tls)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            answer = http.post(body)
            if answer.outcome != "ok":
                raise SystemExit(f"collector answered {answer}")
        return time.perf_counter() - t0, time.process_time() - c0, http.connections
    finally:
        http.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="posts per round (default 300)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each variant, alternated (default 3)")
    ap.add_argument("--body-kib", type=int, default=64, help="body size (default 64 KiB, a batch of ~500 spans)")
    args = ap.parse_args()
    print_machine(f"{args.requests} posts x {args.rounds} rounds, {args.body_kib} KiB bodies")
    body = b"\x0a" * (args.body_kib << 10)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = _certificate(Path(tmp))
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        plain, secure = _collector(None), _collector(server_ctx)
        targets = [("http", f"http://127.0.0.1:{plain}/v1/traces", None),
                   ("https", f"https://127.0.0.1:{secure}/v1/traces", TlsFiles(ca=cert))]
        rows = []
        for scheme, url, tls in targets:
            got: dict[bool, list[tuple[float, float, int]]] = {True: [], False: []}
            for r in range(args.rounds):
                for keep in ((True, False) if r % 2 == 0 else (False, True)):  # ABBA: drift falls on both
                    got[keep].append(_round(url, tls, body, args.requests, keep))
            rate = {k: sum(args.requests for _ in v) / sum(s for s, _, _ in v) for k, v in got.items()}
            cpu = {k: sum(c for _, c, _ in v) / (args.requests * len(v)) for k, v in got.items()}
            conns = {k: sum(n for _, _, n in v) // len(v) for k, v in got.items()}
            for keep in (True, False):
                rows.append([scheme, "kept" if keep else "new per request", f"{rate[keep]:,.0f}",
                             f"{cpu[keep] * 1e6:,.0f}", conns[keep]])
            rows.append([scheme, "kept / new", ratio(rate[True], rate[False]), ratio(cpu[False], cpu[True]) + " less",
                         ""])
        print_table(["scheme", "connection", "requests/s", "CPU us/request", "connections/round"], rows,
                    title="OTLP posts to a loopback collector")
    return 0


if __name__ == "__main__":
    sys.exit(main())
