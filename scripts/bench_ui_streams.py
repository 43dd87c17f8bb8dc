#!/usr/bin/env python
"""What do open dashboard tabs cost while nothing happens? ``labd ui`` with K live event streams on K sleeping
sessions (a tab left open on a running session, for days).

A real daemon on a throwaway home, K ``demo.sleep`` sessions, a real ``labd ui`` process; K plain HTTP clients
(``http.client``, each in a thread) read ``/api/sessions/<id>/stream`` with the token as the page sends it
(``Authorization: Bearer``). Once every stream has delivered its session's ``session.started`` (and a settling
second), the CPU of the ``labd ui`` process and of the daemon process (user + system, psutil) is measured over
``--seconds``, twice, side by side in one run:

1. **no streams**: the dashboard and daemon alone (their background cost);
2. **K streams**: the same, with the K streams open and idle (the sessions sleep: no event is written).

Printed: CPU % of one core per process and phase, the streams' share (phase 2 minus phase 1), the events each
stream delivered during the window (0: idle), and the ``labd ui`` process's thread count. Nothing asserts on
timing (noisy shared machine).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import REPO, BenchDaemon, interrupt_on_sigterm, print_machine, print_table  # noqa: E402


class Stream(threading.Thread):
    """One tab's live stream: reads the SSE response line by line, counting events and noting what it saw."""

    def __init__(self, port: int, token: str, sid: str) -> None:
        super().__init__(name=f"stream-{sid}", daemon=True)
        self.port, self.token, self.sid = port, token, sid
        self.events = 0
        self.kinds: list[str] = []
        self.started = threading.Event()
        self.error: str | None = None
        self.closing = False
        self.conn: http.client.HTTPConnection | None = None

    def run(self) -> None:
        try:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3600)
            self.conn.request("GET", f"/api/sessions/{self.sid}/stream",
                              headers={"Authorization": f"Bearer {self.token}"})
            r = self.conn.getresponse()
            if r.status != 200:
                self.error = f"HTTP {r.status}: {r.read()[:200]!r}"
                return
            for line in r:
                if line.startswith(b"data: {"):
                    self.events += 1
                    kind = re.search(rb'"kind": "([^"]+)"', line)
                    self.kinds.append(kind.group(1).decode() if kind else "?")
                    if b'"session.started"' in line:
                        self.started.set()
        except Exception as exc:  # noqa: BLE001 - said in the report (or the end of the run: close())
            if self.error is None and not self.closing:
                self.error = repr(exc)

    def close(self) -> None:
        """End the stream as a closed tab does (the reader thread sees its end and exits)."""
        self.closing = True
        sock = self.conn.sock if self.conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(2)


def cpu_of(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU % of one core per named process over ``seconds``."""
    import psutil

    procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def snap() -> dict[str, float]:
        out = {}
        for name, p in procs.items():
            t = p.cpu_times()
            out[name] = t.user + t.system
        return out

    t0, c0 = time.monotonic(), snap()
    time.sleep(seconds)
    t1, c1 = time.monotonic(), snap()
    return {name: 100.0 * (c1[name] - c0[name]) / (t1 - t0) for name in procs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=10, help="open streams, one per sleeping session (default 10)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring window per phase (default 20)")
    args = ap.parse_args()
    interrupt_on_sigterm()
    print_machine(f"{args.streams} streams, {args.seconds:g} s per phase")
    ui: subprocess.Popen[str] | None = None
    streams: list[Stream] = []
    sids: list[str] = []
    with BenchDaemon() as d:
        try:
            with d.client() as c:
                sids += [c.start("demo.sleep", params={"seconds": 3600}) for _ in range(args.streams)]
                deadline = time.monotonic() + 120
                while not all(c.session(s)["status"] == "running" for s in sids):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the sessions did not start: {[c.session(s)['status'] for s in sids]}")
                    time.sleep(0.2)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
            ui = subprocess.Popen([sys.executable, "-m", "labd", "--home", str(d.home), "ui"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
            assert ui.stdout is not None
            line = ui.stdout.readline()
            m = re.search(r"http://127\.0\.0\.1:(\d+)/#token=(\S+)", line)
            if not m:
                raise RuntimeError(f"labd ui printed no URL: {line!r}")
            port, token = int(m.group(1)), m.group(2)
            pids = {"labd ui": ui.pid, "daemon": d.pid}

            time.sleep(1.0)  # let both settle after the start
            idle = cpu_of(pids, args.seconds)

            streams = [Stream(port, token, sid) for sid in sids]
            for s in streams:
                s.start()
            deadline = time.monotonic() + 60
            for s in streams:
                if not s.started.wait(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"stream of {s.sid} delivered no session.started: {s.error}")
            time.sleep(1.0)  # the replay of each session's history is done: from here on the streams idle
            before = [s.events for s in streams]
            busy = cpu_of(pids, args.seconds)
            kinds = sorted({k for s, b in zip(streams, before, strict=True) for k in s.kinds[b:]})
            delivered = sum(s.events - b for s, b in zip(streams, before, strict=True))
            threads = len(os.listdir(f"/proc/{ui.pid}/task"))
            failed = [s.error for s in streams if s.error]

            rows = [[name, f"{idle[name]:.2f}", f"{busy[name]:.2f}", f"{busy[name] - idle[name]:+.2f}",
                     f"{(busy[name] - idle[name]) / max(1, args.streams):+.3f}"] for name in pids]
            print_table(["process", "no streams CPU %", f"{args.streams} streams CPU %", "streams' share",
                         "per stream"], rows, title=f"CPU, % of one core, over {args.seconds:g} s per phase")
            print(f"\nevents delivered during the window: {delivered} {kinds or ''}; "
                  f"labd ui threads: {threads}; stream errors: {failed or 'none'}")
        finally:
            for s in streams:
                s.close()
            if ui is not None:
                if ui.poll() is None:
                    ui.send_signal(signal.SIGTERM)
                    try:
                        ui.wait(30)
                    except subprocess.TimeoutExpired:
                        ui.kill()
                        ui.wait()
                if ui.stdout is not None:
                    ui.stdout.close()
            # the sessions are killed with the daemon's leftovers (BenchDaemon.close)
    return 0


if __name__ == "__main__":
    sys.exit(main())
