"""Workflows used only by scripts/bench_scale.py (loaded by import path; the script puts scripts/ on PYTHONPATH)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def _pss() -> int:
    data = Path("/proc/self/smaps_rollup").read_bytes()
    i = data.find(b"\nPss:")
    return int(data[i + 5:data.index(b"kB", i)]) * 1024


def hog(ctx: Any, limit_mb: int = 200, chunk_mb: int = 16, pause: float = 0.01) -> None:
    """Allocate (and touch) ``chunk_mb`` every ``pause`` s until killed. After each chunk it reads its own PSS
    (what the monitor measures; the runner is the whole tree here); the first time that exceeds ``limit_mb``,
    the wall-clock instant goes to ``crossed`` in the work directory (a file: the page cache keeps it after
    the SIGKILL, unlike a print still in the runner's queue)."""
    limit = limit_mb * 2**20
    hoard = []
    crossed = False
    while True:
        block = bytearray(chunk_mb * 2**20)
        for i in range(0, len(block), 4096):  # touch every page: RSS, not just address space
            block[i] = 1
        hoard.append(block)
        if not crossed and _pss() > limit:
            Path("crossed").write_text(repr(time.time()))
            crossed = True
        time.sleep(pause)
