"""When a session overruns a test's deadline, the failure message says where its processes are stuck.

:func:`wait_explained` is ``client.wait`` that, on timeout, fails with the stacks of the session's whole
process tree (runner and every descendant): Python stacks from ``py-spy dump`` when py-spy is installed
(beside the interpreter or on PATH; ``--native`` adds the C frames) and, for every thread, its state,
kernel wait channel and (as root) kernel stack, plus the signal masks of each process and the tail of
the session's events. A flaky hang in CI then explains itself in the test report.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from labd.ipc import LabdError

__all__ = ["wait_explained", "tree_stacks"]


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError as exc:
        return f"<{exc.strerror}>"


def tree_stacks(pid: int, limit: int = 60_000) -> str:
    """Stacks of ``pid`` and all its descendants, as text (at most ``limit`` characters)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error as exc:
        return f"process {pid}: {exc}"
    spy = _py_spy()
    out: list[str] = []
    for p in procs:
        proc = Path(f"/proc/{p.pid}")
        try:
            head = f"=== pid {p.pid} ppid {p.ppid()} {p.status()} {' '.join(p.cmdline())[:120]}"
        except psutil.Error as exc:
            out.append(f"=== pid {p.pid}: {exc}")
            continue
        out.append(head)
        out.extend(line for line in _read(proc / "status").splitlines() if line.startswith("Sig"))
        for task in sorted(proc.glob("task/*"), key=lambda t: int(t.name)):
            comm, wchan = _read(task / "comm"), _read(task / "wchan")
            state = _read(task / "stat").rpartition(")")[2].split()[:1]
            out.append(f"  thread {task.name} {comm!r} state={''.join(state)} wchan={wchan}")
            kstack = _read(task / "stack")
            if kstack and not kstack.startswith("<"):
                out.extend("    " + line for line in kstack.splitlines()[:12])
        if spy is None:
            out.append("  (py-spy not installed: no Python stacks)")
            continue
        try:
            r = subprocess.run([spy, "dump", "--native", "--pid", str(p.pid)], capture_output=True, text=True,
                               timeout=30)
            out.append((r.stdout + r.stderr).rstrip())
        except (OSError, subprocess.TimeoutExpired) as exc:
            out.append(f"  py-spy failed: {exc}")
    text = "\n".join(out)
    return text if len(text) <= limit else text[:limit] + "\n... (cut)"


def wait_explained(client: Any, sid: str, timeout: float) -> dict[str, Any]:
    """``client.wait(sid, timeout)``; on timeout an AssertionError carrying the session's process-tree stacks."""
    try:
        return client.wait(sid, timeout=timeout)
    except LabdError as exc:
        if exc.code != "timeout":
            raise
    row = client.session(sid)
    pid = row.get("pid")
    stacks = tree_stacks(pid) if pid else "no runner pid recorded"
    events = list(client.history(sid))[-15:]
    tail = "\n".join(f"  {e['seq']} {e['kind']} {str(e.get('payload'))[:200]}" for e in events)
    raise AssertionError(f"session {sid} ({row.get('status')}) did not end within {timeout}s.\n"
                         f"Its process tree:\n{stacks}\nIts last events:\n{tail}")
