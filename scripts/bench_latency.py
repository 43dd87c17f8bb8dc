#!/usr/bin/env python
"""Live latency: an event made in a session -> the same event at a client following the live tail.

Method. A real daemon on a temp home; one session per configuration runs ``paced`` (below), which makes
events at a steady rate (1 k and 10 k events/s, in 1 ms slices) for a few seconds:

- ``print``  — the path a user watches: ``print(<wall clock>)`` in the workflow -> fd capture -> ``output``
  event -> spool -> channel (urgent: sent at once) -> ingest -> commit -> live tail. Latency per line =
  client receive time - the time the workflow printed it (in the line itself).
- ``emit``   — ``ctx.emit`` of a ``custom`` event, a *bulk* tracking kind: batched by the channel for up to
  ~250 ms by design. Latency = client receive time - the event's ``ts`` (set in ``emit``).

The client is a SUB socket on the daemon's event socket, as ``Client.follow`` uses; ingest publishes only
after the commit, so every event measured was persisted first. Same machine, same clock. Prints p50/p90/p99
and max per configuration. The machine is shared and noisy: runs are short; read the orders of magnitude.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def paced(ctx: Any, rate: int = 1000, seconds: float = 3.0, mode: str = "print") -> int:
    """Make ``rate`` events per second for ``seconds`` (a slice every millisecond); returns the count."""
    per_ms = max(1, rate // 1000)
    every = max(1, 1000 // rate)  # at rates under 1 k/s, one event every `every` slices
    n = int(rate * seconds)
    t0 = time.perf_counter()
    made = 0
    tick = 0
    while made < n:
        target = t0 + tick * 0.001
        now = time.perf_counter()
        if target > now:
            time.sleep(target - now)
        if tick % every == 0:
            for _ in range(min(per_ms, n - made)):
                if mode == "print":
                    print(f"{time.time():.6f}")
                else:
                    ctx.emit("lat", {"i": made})
                made += 1
        tick += 1
    return made


class Follower(threading.Thread):
    """A live-tail subscriber recording (latency, kind) for every event of the session it is told."""

    def __init__(self, home: Path) -> None:
        super().__init__(daemon=True)
        from labd.ipc.connection import read_connection_file
        from labd.ipc.paths import layout_for

        self.info = read_connection_file(layout_for(home))
        self.sid: str | None = None
        self.lat: list[float] = []
        self.hop: list[float] = []  # the event's own ts (its emit) -> client: the channel + daemon part
        self.ended = threading.Event()
        self.halt = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        import zmq

        from labd.ipc.live import wire_items
        from labd.ipc.wire import Codec, WireError

        ctx = zmq.Context()
        from labd.ipc.connection import events_socket  # CURVE-secured events (plain for older daemons)
        sub = events_socket(ctx, self.info)
        sub.setsockopt(zmq.RCVHWM, 1_000_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"session.")
        sub.connect(self.info.events)
        codec = Codec(self.info.key_bytes)
        self.ready.set()
        try:
            while not self.halt.is_set():
                if not sub.poll(100):
                    continue
                frames = sub.recv_multipart()
                now = time.time()
                try:
                    msg = codec.unpack(frames[1:])
                except WireError:
                    continue
                if msg.body.get("session") != self.sid:
                    continue
                for ev in wire_items(msg.body):  # [seq, ts, kind, src, node_id, parent, payload, src_seq]
                    kind, payload = ev[2], ev[6]
                    if kind in ("output", "custom"):
                        self.hop.append(now - ev[1])
                    if kind == "output":
                        for line in payload["text"].splitlines():
                            try:
                                self.lat.append(now - float(line))
                            except ValueError:
                                pass
                    elif kind == "custom":
                        self.lat.append(now - ev[1])
                    elif kind == "session.ended":
                        self.ended.set()
        finally:
            sub.close(0)
            ctx.term()


def main() -> int:
    sys.path.insert(0, str(HERE))
    from bench_common import BenchDaemon, fmt_ms, interrupt_on_sigterm, print_machine, print_table, summary

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per configuration (default 3)")
    ap.add_argument("--rates", default="1000,10000", help="events per second, comma separated")
    ap.add_argument("--modes", default="print,emit", help="print (urgent output) and/or emit (bulk custom)")
    args = ap.parse_args()
    interrupt_on_sigterm()
    print_machine(f"{args.seconds:g} s per configuration")
    rows = []
    with BenchDaemon(extra_env={"PYTHONPATH": f"{HERE}:{HERE.parent}"}) as d, d.client() as c:
        for mode in args.modes.split(","):
            for rate in (int(r) for r in args.rates.split(",")):
                f = Follower(d.home)
                f.start()
                f.ready.wait(5)
                time.sleep(0.2)  # the subscription reaches the daemon's XPUB
                sid = c.start("bench_latency:paced", params={"rate": rate, "seconds": args.seconds, "mode": mode})
                f.sid = sid
                final = c.wait(sid, timeout=args.seconds * 20 + 60)
                f.ended.wait(5)
                f.halt.set()
                f.join(5)
                s, h = summary(f.lat), summary(f.hop)
                rows.append([mode, f"{rate:,}/s", final["status"], s["n"], fmt_ms(s["p50"]), fmt_ms(s["p90"]),
                             fmt_ms(s["p99"]), fmt_ms(max(f.lat) if f.lat else float("nan")),
                             fmt_ms(h["p50"]), fmt_ms(h["p99"])])
    print_table(["path", "rate", "status", "events seen", "p50 ms", "p90 ms", "p99 ms", "max ms",
                 "event ts->client p50", "p99"], rows, title="made -> client on the live tail (persisted first)")
    print("\nprint = urgent output path (sent at once); emit = bulk tracking kind (batched ~250 ms by design).")
    print("goal (issue 7): print path at 10 k/s p99 <= 20 ms; before the two-speed channel: p50 489 ms, p99 1009 ms.")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
