"""A process's memory as Linux reports it, for the tests that bound what labd holds (/proc/<pid>/status)."""

from __future__ import annotations

import contextlib
from pathlib import Path

__all__ = ["memory_mb", "reset_peak", "run_delay"]


def memory_mb(pid: int, field: str = "VmRSS") -> int:
    """``field`` of the process's status in MiB: ``VmRSS`` (resident now) or ``VmHWM`` (the peak since
    :func:`reset_peak`, or since it started)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> None:
    """Reset the process's peak (``VmHWM``) to what it holds now, so a later read tells what one action raised it by."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def run_delay(pid: int) -> float:
    """Seconds the process's threads waited, runnable, for a CPU (``/proc/<pid>/task/*/schedstat``): what a busy box
    withheld from it, which a test of a CPU limit must not blame on the limit."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9
