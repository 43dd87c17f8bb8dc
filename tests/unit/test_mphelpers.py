"""The waits at a session's end do not wait out their bound for ``multiprocessing``'s helpers (the resource tracker,
the forkserver), which hold the runner's output pipes and the forked children's relay until the runner exits
(labd.runner.mphelpers); they still wait for any other process that holds them.

The capture runs in a child process (it takes over fds 1 and 2), with a real resource tracker; each wait is given a
bound far beyond the child's own deadline, so waiting it out fails the test (no timing threshold: a deadline)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PRELUDE = """
import json, multiprocessing as mp, os, sys, time
from multiprocessing import resource_tracker
from labd.runner.capture import OutputCapture
from labd.runner.mphelpers import helper_pids
real = os.dup(1)
chunks = []
capture = OutputCapture(lambda stream, text: chunks.append([stream, text]))
capture.install()
resource_tracker.ensure_running()  # as a spawn pool or a semaphore starts it: it gets fds 1 and 2, the pipes
assert helper_pids(), "the tracker's pid is known"
"""
EPILOGUE = """
capture.close(timeout=600)  # far beyond the test's deadline: waiting it out fails the test
os.write(real, json.dumps(chunks).encode())
"""


def run_capture(body: str) -> str:
    """Run ``body`` in a child with its fds 1 and 2 captured and a resource tracker alive; what was emitted."""
    return "".join(text for _, text in json.loads(python(PRELUDE + textwrap.dedent(body) + EPILOGUE)))


def python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (its own process tree: a test process has children of its own, other
    tests' daemons, a pytest-xdist worker's); its stdout. It must exit 0 within the deadline."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    return out.stdout


def test_capture_ends_without_waiting_for_the_resource_tracker() -> None:
    """With the resource tracker holding the output pipes (no end-of-file until the runner exits), closing the
    capture returns once the workflow's own processes are gone and their output is emitted: a spawned worker's
    line and the workflow's own are both there."""
    text = run_capture("""
        worker = mp.get_context("spawn").Process(target=print, args=("from a spawned worker",))
        worker.start(); worker.join()
        print("from the workflow")
    """)
    assert "from a spawned worker\n" in text
    assert "from the workflow\n" in text


def test_capture_still_waits_for_a_process_of_the_workflow() -> None:
    """A child of the workflow that is still running holds the pipes too: the capture waits for it (here: it writes
    half a second after the workflow returned, then exits) and emits what it wrote, tracker or not."""
    text = run_capture("""
        pid = os.fork()
        if pid == 0:
            time.sleep(0.5)
            os.write(1, b"written late by a child\\n")
            os._exit(0)
        print("from the workflow")
    """)
    assert "written late by a child\n" in text


def run_alone(body: str) -> None:
    """Run ``body`` in a fresh interpreter; it prints ``ok`` at its end."""
    out = python(textwrap.dedent(body))
    assert out.strip().endswith("ok"), out[-2000:]


def test_only_helpers_left_needs_a_helper_and_nothing_else() -> None:
    """Without a helper the answer is no (end-of-file is what to wait for); with one, yes only while no other child
    of this process is alive; an ended child that is not reaped yet (a zombie) does not count."""
    run_alone("""
        import subprocess, sys, time
        from labd.runner import mphelpers
        assert not mphelpers.only_helpers_left(), "no helper: wait for end-of-file"
        sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
        helper, other = subprocess.Popen(sleep), subprocess.Popen(sleep)
        mphelpers.helper_pids = lambda: {helper.pid}
        assert not mphelpers.only_helpers_left(), "another child is alive"
        other.kill()
        deadline = time.monotonic() + 10
        while not mphelpers.only_helpers_left():  # a zombie until reaped below: already not counted
            assert time.monotonic() < deadline, "a killed child still counted"
            time.sleep(0.01)
        other.wait()
        assert mphelpers.only_helpers_left()
        helper.kill(); helper.wait()
        assert not mphelpers.only_helpers_left(), "the helper gone: nothing left"
        print("ok")
    """)


def test_relay_close_does_not_wait_for_a_helper_holding_its_end() -> None:
    """A helper (a stand-in: a forked child that sent an event and then sleeps, holding the relay's end as the
    forkserver does) does not hold the relay's close: it returns once only helpers are left, with the event taken."""
    run_alone("""
        import os, signal, tempfile, time
        from pathlib import Path
        from labd.runner import mphelpers
        from labd.runner.forked import Relay
        events = []
        relay = Relay(lambda kind, payload, *a, **k: events.append((kind, payload)) or len(events),
                      Path(tempfile.mkdtemp()))
        pid = os.fork()
        if pid == 0:
            try:
                relay.child_emit()("custom", {"name": "from the helper", "data": 1}, None)
                time.sleep(60)
            finally:
                os._exit(0)
        relay.start()
        mphelpers.helper_pids = lambda: {pid}
        relay.close(timeout=600)  # far beyond the test's deadline
        assert events == [("custom", {"name": "from the helper", "data": 1})], events
        os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)
        print("ok")
    """)
