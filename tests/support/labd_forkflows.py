"""Workflows that fork (tests/integration/test_fork.py): what a forked child of a runner can and cannot do."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time


def sigterm_right_after_fork(ctx, children: int = 30) -> dict:
    """Fork children and SIGTERM each one at once (as Pool.terminate() may hit a worker still starting up);
    count those that survive it. Also report whether SIGTERM is blocked in programs started by subprocess,
    with and without preexec_fn (it must not be: they would be unkillable by SIGTERM)."""
    survived = 0
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            for _ in range(100):  # a worker that waits to be terminated
                time.sleep(0.01)
            os._exit(7)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        survived += os.WIFEXITED(status)
    sigterm_bit = 1 << (signal.SIGTERM - 1)
    blocked = {}
    for name, extra in (("plain", {}), ("preexec_fn", {"preexec_fn": lambda: None})):
        out = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True, check=True, **extra)
        mask = int(next(line for line in out.stdout.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
        blocked[name] = bool(mask & sigterm_bit)
    return {"survived": survived, "sigterm_blocked": blocked}


def fork_under_traffic(ctx, children: int = 20) -> dict:
    """Fork while another thread prints, logs and emits events as fast as it can (the channel lock, the
    spool and stdout's lock are taken at random moments of the fork). Each child prints, logs (stdlib and
    structlog), emits an event and ends: half by ``sys.exit(5)``, half by returning from the workflow
    function (both must end the child at once, not run the runner's epilogue). Returns the children's exit
    codes and how many events the thread emitted."""
    stop = threading.Event()
    emitted = [0]
    bg_log = logging.getLogger("bg")

    def traffic() -> None:
        while not stop.is_set():
            i = emitted[0]
            ctx.emit("bg", {"i": i})
            emitted[0] = i + 1
            if i % 10 == 0:
                print(f"bg line {i}")
                bg_log.info("bg record %d", i)

    thread = threading.Thread(target=traffic)
    thread.start()
    codes = []
    print("partial line of the parent", end="")  # in stdout's buffer at every fork: a child must not print it
    try:
        for k in range(children):
            time.sleep(0.005)
            pid = os.fork()
            if pid == 0:
                print(f"child {k} prints")
                logging.getLogger("kid").warning("child %d logs", k)
                ctx.log.info("child structlog", k=k)
                ctx.emit("from_child", {"k": k})
                with ctx.step(f"child step {k}"):
                    pass
                if k % 2:
                    sys.exit(5)
                return {"i am": "a child"}  # the runner must end this process, not record this as the result
            deadline = time.monotonic() + 30
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes.append(os.waitstatus_to_exitcode(status))
                    break
                if time.monotonic() > deadline:  # a hung child: say so instead of hanging the session
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    codes.append("hung")
                    break
                time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    print()
    return {"codes": codes, "emitted": emitted[0]}
