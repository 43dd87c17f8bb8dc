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

import pytest

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


@pytest.mark.parametrize("walk", ["children files", "scan of /proc"])
def test_only_helpers_left_needs_a_helper_and_nothing_else(walk: str) -> None:
    """Without a helper the answer is no (end-of-file is what to wait for); with one, yes only while no other process
    under this one is alive: a child, or an orphaned grandchild this process (a subreaper, as the runner is) took in;
    an ended child that is not reaped yet (a zombie) does not count. Both ways of finding the processes under this
    one: the kernel's per-thread children files, and one pass over /proc where a kernel lacks them."""
    run_alone(f"""
        import ctypes, subprocess, sys, time
        from labd.runner import mphelpers
        mphelpers._HAVE_CHILDREN_FILE = {walk == "children files"}
        assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER, as the runner
        assert not mphelpers.only_helpers_left(), "no helper: wait for end-of-file"
        sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
        helper, other = subprocess.Popen(sleep), subprocess.Popen(sleep)
        mphelpers.helper_pids = lambda: {{helper.pid}}
        assert not mphelpers.only_helpers_left(), "another child is alive"
        other.kill()
        deadline = time.monotonic() + 10
        while not mphelpers.only_helpers_left():  # a zombie until reaped below: already not counted
            assert time.monotonic() < deadline, "a killed child still counted"
            time.sleep(0.01)
        other.wait()
        assert mphelpers.only_helpers_left()
        # a grandchild whose parent exited at once: an orphan, now this process's child
        middle = subprocess.run([sys.executable, "-c", "import subprocess as s, sys; print(s.Popen([sys.executable, "
                                 "'-c', 'import time; time.sleep(60)'], stdout=s.DEVNULL, stderr=s.DEVNULL).pid)"],
                                capture_output=True, text=True, check=True)
        orphan = int(middle.stdout)
        assert not mphelpers.only_helpers_left(), "an orphan taken in is alive"
        import os, signal
        os.kill(orphan, signal.SIGKILL); os.waitpid(orphan, 0)
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


def test_capture_waits_for_a_process_whose_main_thread_exited() -> None:
    """A process whose main thread exited while another of its threads still runs shows as a zombie, but may still
    write: it is waited for (here its thread writes half a second later), not taken for ended."""
    text = run_capture("""
        pid = os.fork()
        if pid == 0:
            import ctypes, threading
            def late():
                time.sleep(0.5)
                os.write(1, b"written by a thread after the main thread exited\\n")
                os._exit(0)
            threading.Thread(target=late).start()
            ctypes.CDLL(None).pthread_exit(None)
        time.sleep(0.1)  # the child's main thread has exited by now: a zombie with a live thread
        print("from the workflow")
    """)
    assert "written by a thread after the main thread exited\n" in text


def test_capture_emits_everything_in_the_pipes_before_it_ends() -> None:
    """A worker that wrote more than the pipe holds right before it ended: the capture, which ends early because only
    the tracker is left, still emits every byte that was in the pipes (the reader is slowed as a busy channel would
    slow it, so the pipe is still full when the worker is gone)."""
    out = python(PRELUDE.replace(
        "lambda stream, text: chunks.append([stream, text])",
        "lambda stream, text: (time.sleep(0.01), chunks.append([stream, text]))") + textwrap.dedent("""
        line = b"x" * 1023 + b"\\n"
        pid = os.fork()
        if pid == 0:
            for _ in range(4096):  # 4 MiB: 4 pipes' worth
                os.write(1, line)
            os._exit(0)
        os.waitpid(pid, 0)
        """) + EPILOGUE)
    text = "".join(t for _, t in json.loads(out))
    assert len(text) == 4096 * 1024, f"{4096 * 1024 - len(text)} bytes lost"


def test_capture_ends_without_waiting_for_the_forkserver() -> None:
    """A workflow that used a ``forkserver`` pool: the forkserver (and the tracker) keep the pipes open, and the
    capture still ends once the worker is gone, with the worker's line emitted."""
    text = run_capture("""
        ctx = mp.get_context("forkserver")
        worker = ctx.Process(target=print, args=("from a forkserver worker",))
        worker.start(); worker.join()
        from multiprocessing import forkserver
        assert forkserver._forkserver._forkserver_pid in helper_pids(), "the forkserver is a known helper"
    """)
    assert "from a forkserver worker\n" in text


def test_wait_for_looks_at_the_processes_before_the_pipes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each look asks whether only helpers are left before it asks whether the pipes are drained: a worker that ended
    before the first question wrote everything it wrote before it, so the second sees it (in the other order, a
    worker could write and end between the two, and its bytes would be left in the pipe)."""
    from labd.runner import mphelpers

    asked: list[str] = []

    def helpers_only() -> bool:
        asked.append("processes")
        return len(asked) > 4

    def drained() -> bool:
        asked.append("pipes")
        return True

    monkeypatch.setattr(mphelpers, "only_helpers_left", helpers_only)
    assert mphelpers.wait_for(lambda wait: False, 60, drained) is False
    assert asked[-2:] == ["processes", "pipes"], asked
    assert "pipes" not in asked[:-1], "the pipes are asked about only once only helpers are left"
