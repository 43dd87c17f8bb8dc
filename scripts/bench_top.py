#!/usr/bin/env python
"""Does ``labd top`` keep up with 100 busy sessions? The app runs headless (Textual's ``run_test``) against a real
daemon, following one session whose every output line carries the runner's clock.

Two phases, side by side in one run:

1. **1 busy session**: the followed ``stamped`` session alone.
2. **100 busy sessions**: the same, plus 99 ``stamped`` sessions printing at the same rate (each a step and a line
   every ``delay`` s: three events per line), so the list, the daemon and the box are all loaded.

Figures per phase: output lag (runner's ``time.time()`` in the line -> the line is in the app's output widget,
sampled every 20 ms), screen updates/s from the feed, events/s delivered to the followed view, the period of the
session-list refresh and the round trip of one ``session.list``, and the app process's CPU use.
Prints figures and ratios; nothing asserts on timing (noisy shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def stamped(ctx: Any, n: int = 100_000, delay: float = 0.1) -> int:
    """The benchmark workflow: a step and one line ``<time.time()> <i>`` every ``delay`` seconds."""
    for i in range(n):
        with ctx.step(f"s{i}"):
            print(f"{time.time():.6f} {i}", flush=True)
        time.sleep(delay)
    return n


async def measure(home: Any, followed: str, seconds: float) -> dict[str, Any]:
    from bench_common import pct

    from labd.frontends.top.app import TopApp

    app = TopApp(home)
    lags: list[float] = []
    app_lags: list[float] = []  # the app's own share: the feed got the event -> the line is on screen
    list_calls: list[float] = []
    list_times: list[float] = []
    async with app.run_test(size=(160, 50)) as pilot:
        deadline = time.monotonic() + 30
        while app.selected != followed or not app.output_log.lines:  # the newest session is followed first
            if time.monotonic() > deadline:
                raise RuntimeError("the app did not follow the benchmark session")
            await pilot.pause(0.05)
        feed = app.feed
        assert feed is not None
        call = feed.call

        async def timed_call(fn: Any) -> Any:  # time the session.list round trips the poller makes
            t0 = time.perf_counter()
            result = await call(fn)
            if isinstance(result, list) and result and "live" in result[0]:
                list_calls.append(time.perf_counter() - t0)
                list_times.append(time.monotonic())
            return result

        feed.call = timed_call  # type: ignore[method-assign]
        received: dict[str, float] = {}  # line stamp -> when the feed got it from the socket or the store
        deliver = feed._deliver

        def timed_deliver(sid: str, ev: dict[str, Any]) -> None:
            if ev["kind"] == "output":
                received[ev["payload"]["text"].split(" ", 1)[0]] = time.time()
            deliver(sid, ev)

        feed._deliver = timed_deliver  # type: ignore[method-assign]
        seen = complete(app.output_log.lines)
        updates0, delivered0, cpu0, t0 = app.updates, feed.delivered, time.process_time(), time.monotonic()
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(0.02)
            lines = app.output_log.lines
            now = time.time()
            n = complete(lines)
            if n < seen:  # the widget trimmed its oldest lines
                seen = 0
            for line in lines[seen:n]:
                stamp = line.split(" ", 1)[0]
                if stamp.replace(".", "", 1).isdigit():
                    lags.append(now - float(stamp))
                    if stamp in received:
                        app_lags.append(now - received.pop(stamp))
            seen = n
        wall = time.monotonic() - t0
        out = {"updates/s": (app.updates - updates0) / wall, "events/s": (feed.delivered - delivered0) / wall,
               "cpu%": 100 * (time.process_time() - cpu0) / wall, "lines": len(lags),
               "lag p50": pct(lags, 50), "lag p90": pct(lags, 90), "lag p99": pct(lags, 99),
               "lag max": max(lags) if lags else float("nan"),
               "app lag p50": pct(app_lags, 50), "app lag p99": pct(app_lags, 99),
               "app lag max": max(app_lags) if app_lags else float("nan"),
               "list rtt p50": pct(list_calls, 50), "list rtt max": max(list_calls) if list_calls else float("nan"),
               "list period": (pct([b - a for a, b in zip(list_times, list_times[1:], strict=False)], 50)
                               if len(list_times) > 1 else float("nan")),
               "rows": len(app.rows)}
        feed.call = call  # type: ignore[method-assign]
        feed._deliver = deliver  # type: ignore[method-assign]
    return out


def complete(lines: Any) -> int:
    """How many of a Log's lines are complete (the last one is the line being written, often empty)."""
    return max(0, len(lines) - 1)


def main() -> None:
    from bench_common import BenchDaemon, fmt_ms, interrupt_on_sigterm, print_machine, print_table, ratio

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--delay", type=float, default=0.1, help="seconds between lines of each session")
    ap.add_argument("--seconds", type=float, default=15.0, help="measuring window per phase")
    args = ap.parse_args()
    interrupt_on_sigterm()
    print_machine()
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    results: dict[str, dict[str, Any]] = {}
    with BenchDaemon() as d:
        from labd.ipc import Client

        with Client(d.home) as c:
            params = {"n": 100_000, "delay": args.delay}
            followed = c.start("bench_top:stamped", params=params, name="followed")
            results["1 busy"] = asyncio.run(measure(d.home, followed, args.seconds))
            others = [c.start("bench_top:stamped", params=params, name=f"busy-{i}") for i in range(args.sessions - 1)]
            # the followed session stays selected: start the app on it by making it the newest again
            c.stop(followed, grace=0)
            followed = c.start("bench_top:stamped", params=params, name="followed-2")
            time.sleep(3)  # let the 100 runners get going
            results[f"{args.sessions} busy"] = asyncio.run(measure(d.home, followed, args.seconds))
            for sid in [followed, *others]:
                c.kill(sid)
    names = list(results)
    keys = ["rows", "lines", "lag p50", "lag p90", "lag p99", "lag max", "app lag p50", "app lag p99",
            "app lag max", "updates/s", "events/s", "list rtt p50",
            "list rtt max", "list period", "cpu%"]

    def show(k: str, v: float) -> str:
        if k.startswith(("lag", "list", "app lag")):
            return fmt_ms(v)
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    rows = [[k, *(show(k, results[n][k]) for n in names), ratio(results[names[1]][k], results[names[0]][k])]
            for k in keys]
    print_table(["figure", *names, "ratio"], rows, title="labd top under load (followed session: one line "
                f"every {args.delay:g} s; others: the same)")


if __name__ == "__main__":
    main()
