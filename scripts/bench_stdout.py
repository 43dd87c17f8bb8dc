#!/usr/bin/env python
"""Stdout throughput: one session printing N lines (``demo.chatty``), every line persisted, checked in order.

One run does, side by side:

1. labd: a ``demo.chatty`` session (``lines`` numbered lines of ``width`` chars to stdout, every 100th line
   a progress line on stderr). Rate = lines / (runner's ``session.started`` -> daemon's ``session.ended``,
   both from the store), also from the client's view (request -> ended seen) and for the print loop alone
   (``session.started`` -> the runner's ``session.finished``).
2. Check: all ``output`` events of stream ``stdout`` concatenated in ``seq`` order, split into lines, must equal
   the expected lines exactly (none missing, none twice, in order); stderr must hold every progress line.
3. Ceilings: the same print loop in a plain ``python -c`` subprocess with stdout and stderr on /dev/null,
   (a) block-buffered (Python's default off a terminal) and (b) line-buffered, which is what a runner's
   captured stdout is (one ``write(2)`` per line). Loop time measured inside the child.

Prints the figures and ratios; nothing asserts on timing (noisy shared machine).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import (  # noqa: E402
    BenchDaemon,
    CpuMeter,
    fmt_rate,
    interrupt_on_sigterm,
    print_machine,
    print_table,
    ratio,
)

TARGET = 200_000  # lines/s (the target)

# The loop of labd.runner.workflows.demo.chatty, verbatim, timed inside the child.
PLAIN_LOOP = r"""
import os, sys, time
lines, width, fd, line_buffered = {lines}, {width}, {fd}, {line_buffered}
if line_buffered:
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
pad = "." * max(0, width - 20)
out = sys.stdout
t0 = time.perf_counter()
for i in range(lines):
    out.write(f"line {{i:09d}} {{pad}}\n")
    if i % 100 == 99:
        print(f"progress {{i + 1}}/{{lines}}", file=sys.stderr)
out.flush()
sys.stderr.flush()
os.write(fd, repr(time.perf_counter() - t0).encode())
"""


def expected_lines(lines: int, width: int) -> list[str]:
    pad = "." * max(0, width - 20)
    return [f"line {i:09d} {pad}" for i in range(lines)]


def plain_run(lines: int, width: int, line_buffered: bool) -> tuple[float, float]:
    """(loop seconds measured in the child, wall seconds Popen -> exit)."""
    r, w = os.pipe()
    try:
        code = PLAIN_LOOP.format(lines=lines, width=width, fd=w, line_buffered=line_buffered)
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL, pass_fds=(w,))
        os.close(w)
        w = -1
        data = b""
        try:
            while chunk := os.read(r, 4096):
                data += chunk
            p.wait(120)
        except BaseException:  # Ctrl-C: do not leave the child printing
            p.kill()
            p.wait()
            raise
        wall = time.perf_counter() - t0
        return float(data.decode()), wall
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def check_output(conn, sid: str, lines: int, width: int) -> dict[str, object]:
    import orjson

    out: list[str] = []
    err: list[str] = []
    n_events = 0
    for (payload,) in conn.execute("SELECT payload FROM events WHERE session_id=? AND kind='output' ORDER BY seq",
                                   (sid,)):
        p = orjson.loads(payload)
        n_events += 1
        (out if p["stream"] == "stdout" else err).append(p["text"])
    text = "".join(out)
    got = text.split("\n")
    trailing_ok = got and got[-1] == ""
    if trailing_ok:
        got.pop()
    want = expected_lines(lines, width)
    first_bad = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    if first_bad is None and len(got) != len(want):
        first_bad = min(len(got), len(want))
    got_set = set(got)
    missing = sum(1 for x in want if x not in got_set)
    dupes = len(got) - len(got_set)
    progress = [x for x in "".join(err).split("\n") if x.startswith("progress ")]
    return {"events": n_events, "stdout_events": len(out), "lines": len(got), "missing": missing,
            "duplicates": dupes, "in_order": first_bad is None, "first_mismatch": first_bad,
            "ends_with_newline": bool(trailing_ok), "stderr_progress": len(progress),
            "stdout_bytes": len(text)}


def run_labd(d: BenchDaemon, lines: int, width: int, timeout: float) -> dict[str, float | str]:
    c = d.client()
    try:
        meter = CpuMeter(d.pid, d.template_pid)
        meter.start()
        t0 = time.perf_counter()
        sid = c.start("demo.chatty", params={"lines": lines, "width": width})
        d.remember_runner(c.session(sid).get("pid"))
        status = d.wait_ended([sid], timeout=timeout, interval=0.02)[sid]
        t_client = time.perf_counter() - t0
        time.sleep(0.2)  # let the template reap the runner so its CPU time is counted
        cpu = meter.stop()
    finally:
        c.close()
    conn = d.db()
    try:
        started, ended = conn.execute("SELECT started_at, ended_at FROM sessions WHERE id=?", (sid,)).fetchone()
        row = conn.execute("SELECT ts FROM events WHERE session_id=? AND kind='session.finished'", (sid,)).fetchone()
        finished = row[0] if row else float("nan")
        check = check_output(conn, sid, lines, width)
    finally:
        conn.close()
    return {"sid": sid, "status": status, "client": t_client, "run": ended - started, "loop": finished - started,
            "cpu": cpu, **check}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000, help="lines printed (default 1000000)")
    ap.add_argument("--width", type=int, default=60, help="demo.chatty width; a line is width-5 chars (default 60)")
    ap.add_argument("--repeat", type=int, default=3, help="labd sessions, one after another (default 3)")
    ap.add_argument("--plain-repeat", type=int, default=3, help="runs of each plain ceiling (default 3)")
    ap.add_argument("--timeout", type=float, default=300, help="give up on a session after this (s)")
    ap.add_argument("--keep", action="store_true", help="keep the temp home (daemon log, database)")
    args = ap.parse_args()
    interrupt_on_sigterm()
    print_machine(f"demo.chatty lines={args.lines:,} width={args.width}")
    t_begin = time.monotonic()
    try:
        results = []
        plain_block: list[float] = []
        plain_line: list[float] = []
        with BenchDaemon(keep=args.keep) as d:
            for i in range(max(args.repeat, args.plain_repeat)):  # interleaved, so drift hits all alike
                if i < args.repeat:
                    results.append(run_labd(d, args.lines, args.width, args.timeout))
                if i < args.plain_repeat:
                    plain_block.append(plain_run(args.lines, args.width, line_buffered=False)[0])
                    plain_line.append(plain_run(args.lines, args.width, line_buffered=True)[0])
        n = args.lines
        print_table(["session", "status", "lines stored", "missing", "dupes", "in order", "output events",
                     "stderr progress"],
                    [[r["sid"], r["status"], f"{r['lines']:,}", r["missing"], r["duplicates"],
                      "yes" if r["in_order"] else f"NO (first mismatch at line {r['first_mismatch']})",
                      r["events"], f"{r['stderr_progress']:,}/{n // 100:,}"] for r in results],
                    title="Completeness check (store)")
        best = min(results, key=lambda r: r["run"])
        med = sorted(results, key=lambda r: r["run"])[(len(results) - 1) // 2]
        pb = sorted(plain_block)[(len(plain_block) - 1) // 2]
        pl = sorted(plain_line)[(len(plain_line) - 1) // 2]
        rate = n / med["run"]
        rows = [
            ["labd: started -> ended (store)", f"{med['run']:.2f}", fmt_rate(rate), ratio(rate, n / pb),
             ratio(rate, n / pl)],
            ["labd: request -> ended seen (client)", f"{med['client']:.2f}", fmt_rate(n / med["client"]),
             ratio(n / med["client"], n / pb), ratio(n / med["client"], n / pl)],
            ["labd: print loop (started -> finished)", f"{med['loop']:.2f}", fmt_rate(n / med["loop"]),
             ratio(n / med["loop"], n / pb), ratio(n / med["loop"], n / pl)],
            ["plain subprocess, block-buffered, /dev/null", f"{pb:.2f}", fmt_rate(n / pb), "1.00x", ratio(pl, pb)],
            ["plain subprocess, line-buffered, /dev/null", f"{pl:.2f}", fmt_rate(n / pl), ratio(pb, pl), "1.00x"],
        ]
        print_table(["path", "seconds (median)", "lines/s", "vs block-buffered", "vs line-buffered"], rows,
                    title=f"Stdout throughput, {n:,} lines (labd median of {len(results)}, best "
                          f"{fmt_rate(n / best['run'])}; plain median of {len(plain_block)})")
        cpu = med["cpu"]
        wall = cpu["wall"]
        print(f"\nCPU for the median labd session ({wall:.2f} s wall): runner {cpu['runners_cpu']:.2f} s "
              f"({cpu['runners_cpu'] / wall:.0%} of a core), daemon {cpu['daemon_cpu']:.2f} s "
              f"(busiest thread {cpu['busiest_thread_cpu']:.2f} s); plain line-buffered loop {pl:.2f} s")
        ok = all(r["missing"] == 0 and r["duplicates"] == 0 and r["in_order"] and r["status"] == "completed"
                 for r in results)
        verdict = "MET" if rate >= TARGET and ok else "NOT MET"
        print(f"target: >= {TARGET:,} lines/s, every line stored once and in order: {rate:,.0f} lines/s, "
              f"complete={'yes' if ok else 'NO'} -> {verdict}")
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    print(f"\n(total {time.monotonic() - t_begin:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
