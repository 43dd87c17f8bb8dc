"""An idle session's output reader sleeps until output comes (no periodic wake-ups: 200 idle sessions' readers took
~10 % of a core), and still ends when the capture is closed, also while another process keeps the pipes open.

The capture runs in a child process (it takes over fds 1 and 2); results come back as JSON on its real stdout."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

PRELUDE = """
import json, os, threading, time
from labd.runner.capture import OutputCapture
real = os.dup(1)
chunks = []
capture = OutputCapture(lambda stream, text: chunks.append(text))
capture.install()
reader = next(t for t in threading.enumerate() if t.name == "labd-output")

def switches():
    with open(f"/proc/self/task/{reader.native_id}/status") as f:
        return sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
"""


def run(body: str) -> dict[str, Any]:
    """Run ``body`` (which sets ``result``) after the prelude in a fresh interpreter; ``result`` as JSON."""
    code = PRELUDE + textwrap.dedent(body) + "\nos.write(real, json.dumps(result).encode())\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_an_idle_reader_does_not_wake_up() -> None:
    """Once a line has been emitted and nothing is pending, the reader thread sleeps through a whole second of
    silence (it woke 10 times a second before); then the next output still arrives, and close() ends it."""
    result = run("""
        print("first")
        deadline = time.monotonic() + 10
        while "first\\n" not in chunks and time.monotonic() < deadline:
            time.sleep(0.01)
        before = switches()
        time.sleep(1.0)
        idle = switches() - before
        print("second")
        capture.close(timeout=10)
        result = {"idle": idle, "chunks": chunks, "alive": reader.is_alive()}
    """)
    assert result["idle"] <= 1, f"the idle reader woke {result['idle']} times in a second"
    assert "".join(result["chunks"]) == "first\nsecond\n"
    assert not result["alive"]


def test_close_ends_the_reader_while_another_process_holds_the_pipes() -> None:
    """A child that keeps fds 1 and 2 open (no end-of-file) past close()'s bound: the reader is told to stop and
    ends (with no periodic wake-up it would sleep in its wait for good), and what was written before is emitted."""
    result = run("""
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        print("before close", flush=True)
        capture.close(timeout=0.3)
        alive = reader.is_alive()
        os.kill(pid, 9); os.waitpid(pid, 0)
        result = {"alive": alive, "chunks": chunks}
    """)
    assert not result["alive"], "the reader did not end"
    assert "".join(result["chunks"]) == "before close\n"
