#!/usr/bin/env python
"""What withholding secrets costs on the event path, with 0, 1 and 5 secrets side by side, in process (no daemon).

1. ``Channel.emit`` per event: a real :class:`~labd.runner.channel.Channel` with its spool, thread not started (emit
   encodes, replaces the withheld values, appends to the spool); between blocks (not timed) the backlog is taken and
   acknowledged as the channel thread and the daemon would. Events: a small ``custom`` event and ``output`` events
   of one 80-character line, 4 KiB and 64 KiB (the capture's largest chunk). Time per event of the emitting thread.
   Beside it, per secret and encoded event, the two ways to look: ``value in raw`` then ``replace`` (what emit did
   before) and ``raw.replace(value, mark)`` alone (what it does now: the same object back when absent).
2. The output capture's hold-back per chunk (:class:`~labd.runner.withhold.StreamWithholder` ``split``, what
   ``OutputCapture`` does for each chunk when the session has secrets; nothing at all without): chunks that end in
   a newline (the usual case), a partial line whose end may begin a secret (a tail is searched), a chunk holding
   the secret (replaced; once, or on each of its 819 lines), and the same with one multi-line (PEM-like) secret,
   whose newlines make every line-ending chunk a candidate for holding back.
3. The runner's output path end to end: a child process with ``OutputCapture`` installed on fds 1 and 2, feeding a
   real ``Channel.emit`` (withholding the same secrets), prints ``--lines`` lines; CPU seconds of the whole process
   (workflow thread + capture reader) per line, and wall time.

Secrets are random 40-character tokens (``sk-...``); "5 + PEM" adds a 4-line private key. Blocks of the variants
are interleaved (rotating order) and medians taken, so drift hits all alike. Nothing asserts on timing.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_common import bare_channel, interrupt_on_sigterm, print_machine, print_table, ratio  # noqa: E402

PEM = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
       "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n-----END PRIVATE KEY-----")


def make_secrets(n: int, pem: bool = False, seed: int = 7) -> dict[str, str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    secrets = {f"BENCH_{i}_API_KEY": "sk-" + "".join(rng.choice(alphabet) for _ in range(37)) for i in range(n)}
    if pem:
        secrets["BENCH_PRIVATE_KEY"] = PEM
    return secrets


VARIANTS: dict[str, dict[str, str]] = {"0 secrets": {}, "1 secret": make_secrets(1), "5 secrets": make_secrets(5),
                                       "5 + PEM": make_secrets(5, pem=True)}


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


# ---- 1. Channel.emit -------------------------------------------------------------------------------------------
def channel_for(secrets: dict[str, str], workdir: Path) -> tuple[Callable[..., int], Callable[[], None]]:
    """(emit of a fresh never-started channel withholding ``secrets``, what to do between blocks)."""
    return bare_channel(workdir / f"spool-{len(secrets)}-{time.monotonic_ns()}", secrets)


def bench_emit(variants: list[str], n: int, rounds: int, workdir: Path) -> None:
    line = "step 000123: loss=0.4312 acc=0.8125 lr=3.0e-04 tokens/s=18234.5 (epoch 3/10)".ljust(79, ".") + "\n"
    shapes: list[tuple[str, str, Any, int]] = [
        ("custom (small)", "custom", {"name": "tick", "data": 12345}, n),
        ("output, 80 B line", "output", {"stream": "stdout", "text": line}, n),
        ("output, 4 KiB", "output", {"stream": "stdout", "text": line * 52}, max(1, n // 10)),
        ("output, 64 KiB", "output", {"stream": "stdout", "text": line * 820}, max(1, n // 100)),
    ]
    rows = []
    for label, kind, payload, count in shapes:
        chans = {v: channel_for(VARIANTS[v], workdir) for v in variants}
        samples: dict[str, list[float]] = {v: [] for v in variants}
        for v in variants:  # warm-up (allocator, spool file)
            emit, between = chans[v]
            for _ in range(min(count, 1000)):
                emit(kind, payload)
            between()
        for r in range(rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                emit, between = chans[v]
                t0 = time.thread_time()
                for _ in range(count):
                    emit(kind, payload)
                samples[v].append((time.thread_time() - t0) / count)
                between()
        base = median_us(samples[variants[0]])
        for v in variants:
            us = median_us(samples[v])
            rows.append([label, v, f"{us:.2f}", f"{(us - base) * 1000:+.0f}", ratio(us, base)])
    print_table(["event", "variant", "us/event", "ns vs 0 secrets", "ratio"], rows,
                title=f"1. Channel.emit per event (thread CPU; median of {rounds} blocks; spool on "
                      f"{workdir}; {n:,} small events per block)")
    bench_search(shapes, rounds)


def bench_search(shapes: list[tuple[str, str, Any, int]], rounds: int) -> None:
    """Per secret: ``value in raw`` (then replace) against ``raw.replace(value, mark)``, the value absent."""
    import orjson

    value = VARIANTS["1 secret"]["BENCH_0_API_KEY"].encode()
    mark = b"[secret BENCH_0_API_KEY withheld]"
    rows = []
    for label, kind, payload, count in shapes:
        raw = orjson.dumps([123, time.time(), kind, None, None, payload])
        reps = max(1000, count * 10)
        samples: dict[str, list[float]] = {"in": [], "replace": []}
        for _ in range(rounds):
            t0 = time.thread_time()
            for _ in range(reps):
                if value in raw:
                    raw.replace(value, mark)
            t1 = time.thread_time()
            for _ in range(reps):
                raw.replace(value, mark)
            t2 = time.thread_time()
            samples["in"].append((t1 - t0) / reps)
            samples["replace"].append((t2 - t1) / reps)
        old, new = median_us(samples["in"]) * 1000, median_us(samples["replace"]) * 1000
        rows.append([label, f"{len(raw):,}", f"{old:,.0f}", f"{new:,.0f}", ratio(new, old)])
    print_table(["event", "bytes", "`in` + replace, ns", "replace alone, ns", "ratio"], rows,
                title="1b. Looking for one secret in one encoded event, absent (loop overhead included)")


# ---- 2. the hold-back per chunk -------------------------------------------------------------------------------
def bench_split(variants: list[str], rounds: int) -> None:
    from labd.runner.withhold import StreamWithholder

    line = "step 000123: loss=0.4312 acc=0.8125 lr=3.0e-04 tokens/s=18234.5 (epoch 3/10)".ljust(79, ".") + "\n"
    key = VARIANTS["1 secret"]["BENCH_0_API_KEY"]
    chunks = {
        "80 B line": line,
        "64 KiB of lines": line * 820,
        "partial line ending 'sk'": "downloading shards: 45%|#####     | 9/20 [00:04<00:05, tasks",
        "line with the secret": f"using key {key} for the call\n",
        "64 KiB, secret in it": line * 400 + f"using key {key}\n" + line * 419,
        "64 KiB, secret every line": f"using key {key} {line[:28]}\n" * 819,
    }
    rows = []
    for label, chunk in chunks.items():
        reps = max(50, 2_000_000 // len(chunk))
        samples: dict[str, list[float]] = {v: [] for v in variants}
        withholders = {v: StreamWithholder.of(VARIANTS[v]) for v in variants}
        for r in range(rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                w = withholders[v]
                t0 = time.thread_time()
                if w is None:  # what OutputCapture._out does without secrets: nothing
                    for _ in range(reps):
                        pass
                else:
                    split = w.split
                    for _ in range(reps):
                        split(chunk)
                samples[v].append((time.thread_time() - t0) / reps)
        for v in variants:
            us = median_us(samples[v])
            mbs = len(chunk) / (us / 1e6) / 1e6 if us > 0 else float("inf")
            rows.append([label, f"{len(chunk):,}", v, f"{us:.3f}", "-" if v == variants[0] else f"{mbs:,.0f}"])
    print_table(["chunk", "chars", "variant", "us/chunk", "MB/s"], rows,
                title=f"2. Output hold-back per captured chunk (StreamWithholder.split; median of {rounds} blocks)")


# ---- 3. the runner's output path end to end ---------------------------------------------------------------------
CHILD = textwrap.dedent(r'''
    import json, os, sys, tempfile, time
    from labd.ipc.wire import Codec
    from labd.runner.capture import OutputCapture
    from labd.runner.channel import Channel

    secrets, lines, mode = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    real = os.dup(1)
    channel = Channel("tcp://127.0.0.1:9", b"k" * 32, "bench", max_unacked=10**9,
                      spool=os.path.join(tempfile.mkdtemp(prefix="labd-withhold-"), "events.spool"))
    channel.withhold(secrets)
    events = [0]

    def emit_output(stream, text):
        events[0] += 1
        channel.emit("output", {"stream": stream, "text": text})

    capture = OutputCapture(emit_output)
    capture.withhold(secrets)
    capture.install()
    key = next(iter(secrets.values()), "")
    line = "step 000123: loss=0.4312 acc=0.8125 lr=3.0e-04 tokens/s=18234.5 (epoch 3/10)".ljust(79, ".")
    if mode == "secret":
        line = f"using key {key} " + line[: max(0, 79 - len(key) - 11)]
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(lines):
        print(line)
    capture.close()
    c1, t1 = time.process_time(), time.perf_counter()
    os.write(real, json.dumps({"cpu": c1 - c0, "wall": t1 - t0, "events": events[0]}).encode())
''')


def run_child(secrets: dict[str, str], lines: int, mode: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(secrets), str(lines), mode],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"child failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def bench_capture(variants: list[str], lines: int, rounds: int) -> None:
    rows = []
    for mode, title in (("plain", "lines without the secret"), ("secret", "every line prints the first secret")):
        vs = [v for v in variants if not (mode == "secret" and v == "0 secrets")]
        results: dict[str, list[dict[str, float]]] = {v: [] for v in vs}
        for r in range(rounds):
            order = vs[r % len(vs):] + vs[:r % len(vs)]
            for v in order:
                results[v].append(run_child(VARIANTS[v], lines, mode))
        if mode == "plain":
            base = statistics.median(x["cpu"] for x in results[vs[0]])
        for v in vs:
            cpu = statistics.median(x["cpu"] for x in results[v])
            wall = statistics.median(x["wall"] for x in results[v])
            ev = statistics.median(x["events"] for x in results[v])
            rows.append([title, v, f"{cpu / lines * 1e6:.2f}", f"{wall:.2f}", f"{lines / wall / 1e3:,.0f} k/s",
                         f"{ev:,.0f}", ratio(cpu, base)])
    print_table(["output", "variant", "CPU us/line", "wall s", "lines/s", "events", f"CPU vs {variants[0]}"], rows,
                title=f"3. Captured output -> Channel.emit, {lines:,} printed lines per run (process CPU; median of "
                      f"{rounds} runs; a child per run)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=100_000, help="small events per Channel.emit block (default 100000)")
    ap.add_argument("--lines", type=int, default=200_000, help="lines printed per capture run (default 200000)")
    ap.add_argument("--rounds", type=int, default=5, help="blocks/runs of each variant (medians; default 5)")
    ap.add_argument("--only", choices=("emit", "split", "capture"), help="run one part only")
    args = ap.parse_args()
    interrupt_on_sigterm()
    print_machine(f"secrets: random 40-char tokens; PEM: {len(PEM)} chars, 4 lines")
    variants = list(VARIANTS)
    with tempfile.TemporaryDirectory(prefix="labd-bench-withhold-") as tmp:
        if args.only in (None, "emit"):
            bench_emit(variants[:3], args.n, args.rounds, Path(tmp))
    if args.only in (None, "split"):
        bench_split(variants, args.rounds)
    if args.only in (None, "capture"):
        bench_capture(variants, args.lines, max(1, args.rounds // 2 + 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
