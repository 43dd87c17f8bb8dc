"""runner/forksafe.py in a process of its own (its at-fork hooks are process-wide): signal masks around a
fork, and how a forked child that leaves the workflow function ends."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO


def _run(code: str) -> subprocess.CompletedProcess[str]:
    prelude = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from labd.runner import forksafe
        signal.signal(signal.SIGTERM, lambda *a: None)  # like the runner
        forksafe.install()
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60)


def test_a_fork_leaves_the_parents_mask_alone_and_the_child_killable_at_once() -> None:
    """Children SIGTERMed right after fork all die of it; afterwards the parent's SIGTERM is not blocked, and
    one the parent had blocked itself stays blocked."""
    r = _run("""
        killed = 0
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                import time; time.sleep(5); os._exit(7)
            os.kill(pid, signal.SIGTERM)
            killed += os.WIFSIGNALED(os.waitpid(pid, 0)[1])
        print(killed, signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []))
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        print(signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []))
    """)
    assert r.stdout.split() == ["20", "False", "True"], r.stderr


def test_a_forked_child_leaving_the_workflow_function_ends_as_a_python_process_would() -> None:
    """forksafe.call in the child: a return exits 0, sys.exit(3) exits 3, sys.exit("why") prints why and exits
    1, an exception prints its traceback and exits 1; the parent gets the function's value."""
    r = _run("""
        import atexit
        def workflow(how):
            if os.fork():
                return "parent"
            atexit.register(print, "atexit ran", how, file=sys.stderr)
            if how == "return":
                return "child"
            if how == "raise":
                raise KeyError("oops")
            sys.exit(3 if how == "exit3" else "why")
        for how in ("return", "exit3", "exitmsg", "raise"):
            assert forksafe.call(workflow, how) == "parent"
            print(how, os.waitstatus_to_exitcode(os.wait()[1]))
    """)
    assert r.stdout.splitlines() == ["return 0", "exit3 3", "exitmsg 1", "raise 1"], r.stderr
    assert "why" in r.stderr and "KeyError: 'oops'" in r.stderr
    assert all(f"atexit ran {how}" in r.stderr for how in ("return", "exit3", "exitmsg", "raise"))
