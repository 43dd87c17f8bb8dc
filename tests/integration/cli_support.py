"""Helpers for the CLI tests: run `python -m labd` as a user would, in a pipe or on a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path


def labd(*args: str, timeout: float = 60, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``labd ARGS`` with stdout/stderr captured (pipes: no terminal, so plain text)."""
    return subprocess.run([sys.executable, "-m", "labd", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env)


def labd_tty(*args: str, env: dict[str, str] | None = None, timeout: float = 60, stdout: Path | None = None) -> str:
    """``labd ARGS`` on a 200-column pseudo-terminal; returns everything it wrote (escape codes included). With
    ``stdout``, its stdout goes to that file instead (not a terminal) and only stderr is on the terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    out = open(stdout, "wb") if stdout is not None else None  # noqa: SIM115 - closed once the child has it
    proc = subprocess.Popen([sys.executable, "-m", "labd", *args], stdin=subprocess.DEVNULL,
                            stdout=out if out is not None else slave, stderr=slave,
                            env={**os.environ, "COLUMNS": "200", **(env or {})})
    os.close(slave)
    if out is not None:
        out.close()
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(timeout)
    return b"".join(chunks).decode(errors="replace")
