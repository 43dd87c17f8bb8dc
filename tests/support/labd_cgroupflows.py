"""Workflows for the per-session cgroup tests (tests/integration/test_cgroups.py): memory the /proc monitor cannot
see, a thread storm, a look at the session's own group, and an attempt to leave it."""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from pathlib import Path

F_SETPIPE_SZ = 1031


def groups(ctx) -> dict:
    """The runner's and a child's ``/proc/self/cgroup``."""
    child = subprocess.run(["cat", "/proc/self/cgroup"], capture_output=True, text=True, check=True).stdout
    return {"runner": Path("/proc/self/cgroup").read_text(), "child": child}


def pipe_hoard(ctx, mb: int = 400) -> int:
    """Fill 1 MiB pipes with ``mb`` MiB (kernel memory: in no process's pages, so not in PSS), printing progress,
    then hold them. Returns the MiB held (it is not meant to get there under a lower memory limit)."""
    held, pipes = 0, []
    chunk = b"\1" * (1 << 20)
    while held < mb:
        r, w = os.pipe()
        fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
        os.write(w, chunk)
        pipes.append((r, w))
        held += 1
        if held % 16 == 0:
            print(f"held {held} MiB", flush=True)
    time.sleep(60)
    return held


def thread_storm(ctx, n: int = 5000, hold: float = 0.0) -> int:
    """Start up to ``n`` idle threads, then wait ``hold`` seconds; the number that started (a task limit stops the
    rest)."""
    done = threading.Event()
    started = 0
    try:
        for _ in range(n):
            threading.Thread(target=done.wait, daemon=True).start()
            started += 1
    except RuntimeError as exc:  # "can't start new thread": the kernel refused a task
        print(f"refused after {started}: {exc}", flush=True)
    done.set()
    time.sleep(hold)
    return started


def leave_group(ctx) -> str:
    """Try to move this process into the top group of the memory hierarchy (v1) or of the unified one (v2)."""
    top = next(p for p in (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")) if (p / "cgroup.procs").exists())
    try:
        (top / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as exc:
        return f"refused: {exc.strerror}"
    return "moved"


def write_any_cgroup(ctx) -> dict:
    """Open for writing, in every mounted cgroup hierarchy (not only memory and pids), the files a process that could
    write them would use to get out of its group or out of its confinement: ``cgroup.procs`` (move any process, the
    daemon included, into a group of its choosing, e.g. a frozen one) and v1's ``release_agent`` (a program the
    kernel runs as root, unconfined). Nothing is written. Returns what was writable (path -> "writable")."""
    out = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        f = line.split()
        if f[2] not in ("cgroup", "cgroup2"):
            continue
        for name in ("cgroup.procs", "release_agent"):
            p = Path(f[1]) / name
            if not p.exists():
                continue
            try:
                os.close(os.open(p, os.O_WRONLY))
            except OSError:
                continue
            out[str(p)] = "writable"
    for p in (Path("/sys/kernel/mm/transparent_hugepage/enabled"), Path("/sys/power/state")):  # machine settings
        try:
            os.close(os.open(p, os.O_WRONLY))
        except OSError:
            continue
        out[str(p)] = "writable"
    return out


def leave_orphan(ctx, seconds: float = 120) -> int:
    """Start a ``sleep`` in a session of its own with an empty environment (no marker, not in the runner's process
    group), print its pid as ``orphan <pid>``, and wait."""
    child = subprocess.Popen(["/bin/sleep", "600"], env={}, start_new_session=True)
    print(f"orphan {child.pid}", flush=True)
    time.sleep(seconds)
    return child.pid
