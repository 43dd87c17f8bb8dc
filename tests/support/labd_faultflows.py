"""Workflows for the output-cap and flood tests: numbered output, as fast as it can be written."""

from __future__ import annotations

import os
import sys
import time

LINE = 100  # bytes per numbered line: "%09d " + padding + "\n"


def line(i: int) -> bytes:
    """The ``i``-th line every flow here writes (the tests rebuild it to check what was stored)."""
    head = b"%09d " % i
    return head + b"x" * (LINE - len(head) - 1) + b"\n"


def numbered(ctx, lines: int = 1000, block: int = 1000) -> int:
    """Write ``lines`` numbered lines straight to fd 1, ``block`` lines per write."""
    i = 0
    while i < lines:
        n = min(block, lines - i)
        os.write(1, b"".join(line(j) for j in range(i, i + n)))
        i += n
    return lines


def flood_for(ctx, seconds: float = 15.0, block: int = 2000, most: int = 10**9) -> int:
    """Write numbered lines to fd 1 as fast as possible for ``seconds`` (at most ``most`` lines)."""
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end and i < most:
        n = min(block, most - i)
        os.write(1, b"".join(line(j) for j in range(i, i + n)))
        i += n
    sys.stderr.write(f"wrote {i}\n")
    return i


def ignores_cap(ctx, chunks: int = 200, size: int = 64 * 1024) -> int:
    """A session that emits output events itself, around the capture and its cap (a runner that does not
    honour its cap, as far as the daemon can tell)."""
    text = "y" * (size - 1) + "\n"
    for _ in range(chunks):
        ctx._emit("output", {"stream": "stdout", "text": text}, None)  # noqa: SLF001 - on purpose
    return chunks
