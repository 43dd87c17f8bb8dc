#!/usr/bin/env python
"""The Ray launcher vs. the local template launcher, side by side in one run, on one daemon.

Starts a real one-node Ray cluster on loopback (``ray start --head --block``, its own process group, stopped at the
end) and one daemon whose ``[launcher]`` has the cluster's address (kind stays ``template``: local sessions are the
default, ``placement={"on": "ray"}`` sends one to Ray). Then, interleaved round by round:

1. start -> first output: ``demo.count`` (prints its first line, then keeps working) started with each launcher;
   request -> first ``output`` event on the daemon's live tail (what a user waits for), and request ->
   ``session.started`` (the runner is up and connected). Local: a fork of the warm template. Ray: an actor is
   created and scheduled, the actor starts a fresh runner interpreter, which connects back over TCP + CurveZMQ.
2. events/s: ``demo.events`` (``--events`` small custom events) with each launcher, one at a time;
   rate = events / (first ``custom`` event -> ``session.ended`` on the live tail: the runner's start-up, which part 1
   measures, is left out), and every event is checked in the store (``--events`` ``custom`` rows, in order).

Prints p50/min/max per launcher and the ratios. Nothing asserts on timing: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import (  # noqa: E402
    BenchDaemon,
    EventTail,
    fmt_ms,
    fmt_rate,
    interrupt_on_sigterm,
    print_machine,
    print_table,
    ratio,
    summary,
)


def start_ray(temp: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_bin = str(Path(sys.executable).parent / "ray")
    proc = subprocess.Popen([ray_bin, "start", "--block", "--head", "--num-cpus", "2", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--temp-dir", temp, "--include-dashboard", "false",
                             "--disable-usage-stats"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "HOME": temp})
    up = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if b"Ray runtime started" in line:
                up.set()

    threading.Thread(target=read, daemon=True).start()
    t0 = time.monotonic()
    while not up.is_set():
        if proc.poll() is not None or time.monotonic() - t0 > 120:
            raise RuntimeError("ray start --head failed")
        time.sleep(0.1)
    print(f"ray head up in {time.monotonic() - t0:.1f}s (127.0.0.1:{port})")
    return proc, f"127.0.0.1:{port}"


def stop_ray(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="start -> first output rounds per launcher")
    ap.add_argument("--events", type=int, default=20000, help="events per throughput session")
    ap.add_argument("--runs", type=int, default=2, help="throughput sessions per launcher")
    args = ap.parse_args()
    interrupt_on_sigterm()
    print_machine("Ray launcher vs local template launcher; one daemon, one run, interleaved")
    temp = tempfile.mkdtemp(prefix="rayb", dir="/tmp")
    cfg = Path(temp) / "cfg" / "labd"
    cfg.mkdir(parents=True)
    ray_proc, address = start_ray(temp)
    try:
        (cfg / "config.toml").write_text(f'[launcher]\naddress = "{address}"\nrunner_listen = "tcp://127.0.0.1:0"\n')
        with BenchDaemon(extra_env={"XDG_CONFIG_HOME": str(cfg.parent)}) as d:
            run(d, args)
    finally:
        stop_ray(ray_proc)
        subprocess.run(["rm", "-rf", temp], check=False)


def run(d: BenchDaemon, args: argparse.Namespace) -> None:
    from labd.ipc import Client

    tail = EventTail(d.home, kinds={"output", "custom", "session.started", "session.ended"})
    tail.start()
    where = {"local": None, "ray": {"on": "ray"}}
    first: dict[str, list[float]] = {"local": [], "ray": []}
    started: dict[str, list[float]] = {"local": [], "ray": []}
    with Client(d.home, timeout=60) as c:
        for warm in ("local", "ray"):  # one unmeasured session each: the template and the cluster's first worker
            sid = c.start("demo.count", params={"n": 1, "delay": 0}, placement=where[warm])
            tail.wait_for(sid, "session.ended", 120)
        for r in range(args.rounds):
            for kind in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
                t0 = time.perf_counter()
                sid = c.start("demo.count", params={"n": 2, "delay": 0.2}, placement=where[kind])
                out = tail.wait_for(sid, "output", 120)
                st = tail.get(sid, "session.started")
                if out is not None:
                    first[kind].append(out - t0)
                if st is not None:
                    started[kind].append(st - t0)
                tail.wait_for(sid, "session.ended", 120)
        rows = []
        for kind in ("local", "ray"):
            f, s = summary(first[kind]), summary(started[kind])
            rows.append([kind, s["n"], fmt_ms(s["p50"]), fmt_ms(f["p50"]), fmt_ms(f["min"]), fmt_ms(f["max"])])
        print_table(["launcher", "n", "-> started p50", "-> first output p50", "min", "max"], rows,
                    title="1. session start -> first output (live tail)")
        print(f"ray / local, first output p50: {ratio(summary(first['ray'])['p50'], summary(first['local'])['p50'])}")

        rates: dict[str, list[float]] = {"local": [], "ray": []}
        checks: list[str] = []
        for r in range(args.runs):
            for kind in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
                sid = c.start("demo.events", params={"n": args.events}, placement=where[kind])
                end = tail.wait_for(sid, "session.ended", 600)
                st = tail.get(sid, "custom")
                if end is not None and st is not None:
                    rates[kind].append(args.events / (end - st))
                ticks = [e for e in c.history(sid, kinds=["custom"])]
                srcs = [e.get("src_seq") for e in ticks]
                ok = len(ticks) == args.events and srcs == sorted(srcs)
                checks.append(f"{kind} {sid}: {len(ticks)} custom events stored{'' if ok else ' (MISMATCH)'}")
        rows = [[k, len(v), fmt_rate(summary(v)["p50"]), fmt_rate(summary(v)["min"]), fmt_rate(summary(v)["max"])]
                for k, v in rates.items()]
        print_table(["launcher", "runs", "events/s p50", "min", "max"], rows,
                    title=f"2. events/s, one session of {args.events} small events at a time")
        print(f"ray / local, events/s p50: {ratio(summary(rates['ray'])['p50'], summary(rates['local'])['p50'])}")
        for line in checks:
            print("  " + line)
    tail.stop()


if __name__ == "__main__":
    main()
