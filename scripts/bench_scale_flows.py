"""Workflows used only by scripts/bench_scale.py (loaded by import path; the script puts scripts/ on PYTHONPATH)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def _pss() -> int:
    data = Path("/proc/self/smaps_rollup").read_bytes()
    i = data.find(b"\nPss:")
    return int(data[i + 5:data.index(b"kB", i)]) * 1024


def hog(ctx: Any, limit_mb: int = 200, chunk_mb: int = 16, pause: float = 0.01) -> None:
    """Allocate (and touch) ``chunk_mb`` every ``pause`` s until killed, and leave the breach instant in files
    of the work directory (files: the page cache keeps them after the SIGKILL, unlike a print still queued):

    - ``crossed``: when its own PSS (what the monitor measures; the runner is the whole tree here), read after
      each chunk, first exceeded ``limit_mb``;
    - ``chunk``: when the chunk being touched began — if the kill comes while a chunk is half touched, the
      breach happened after this instant, so using it over-states the latency (an upper bound)."""
    limit = limit_mb * 2**20
    hoard = []
    crossed = False
    while True:
        Path("chunk.tmp").write_text(repr(time.time()))
        os.replace("chunk.tmp", "chunk")
        block = bytearray(chunk_mb * 2**20)
        for i in range(0, len(block), 4096):  # touch every page: RSS, not just address space
            block[i] = 1
        hoard.append(block)
        if not crossed and _pss() > limit:
            Path("crossed.tmp").write_text(repr(time.time()))
            os.replace("crossed.tmp", "crossed")  # whole or absent, even if the kill lands mid-write
            crossed = True
        time.sleep(pause)
