"""Built-in demo workflows: small, deterministic, and useful for trying labd out and for benchmarks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from labd.runner.context import Context

__all__ = ["count", "compute", "chatty", "fail", "sleep", "events"]


def count(ctx: Context, n: int = 10, delay: float = 0.2, label: str = "count") -> int:
    """Count to ``n``, one step per number, printing ``label i/n`` and pausing ``delay`` seconds."""
    for i in range(1, n + 1):
        with ctx.step(f"{label} {i}"):
            print(f"{label} {i}/{n}")
            ctx.sleep(delay)
    return n


def compute(ctx: Context, rounds: int = 5, work: int = 200_000) -> str:
    """Hash-chain ``work`` iterations per round, write each result to a file, and print from a child process."""
    digest = b"labd"
    for r in range(1, rounds + 1):
        with ctx.step(f"round {r}"):
            for _ in range(work):
                digest = hashlib.sha256(digest).digest()
            (ctx.workdir / f"round-{r}.txt").write_text(digest.hex() + "\n")
            ctx.log.info("round done", round=r, digest=digest.hex()[:16])
            print(f"round {r}: {digest.hex()[:16]}")
    with ctx.step("report"):
        subprocess.run([sys.executable, "-c", "print('child process: report written')"], check=True)
        os.write(1, b"fd-level write: done\n")
    return digest.hex()


def chatty(ctx: Context, lines: int = 1000, width: int = 60) -> int:
    """Print ``lines`` numbered lines to stdout (and every 100th to stderr) as fast as possible."""
    pad = "." * max(0, width - 20)
    out = sys.stdout
    for i in range(lines):
        out.write(f"line {i:09d} {pad}\n")
        if i % 100 == 99:
            print(f"progress {i + 1}/{lines}", file=sys.stderr)
    return lines


def events(ctx: Context, n: int = 100_000) -> int:
    """Emit ``n`` small custom events as fast as possible (the event-throughput benchmark)."""
    emit = ctx.emit
    for i in range(n):
        emit("tick", i)
    return n


def fail(ctx: Context, message: str = "deliberate failure") -> None:
    """Fail inside a step with ``message``."""
    with ctx.step("doomed"):
        print("about to fail")
        raise RuntimeError(message)


def sleep(ctx: Context, seconds: float = 3600.0) -> None:
    """Sleep cooperatively for ``seconds`` (stops promptly when asked)."""
    with ctx.step("sleep"):
        print(f"sleeping {seconds}s", flush=True)
        ctx.sleep(seconds)
