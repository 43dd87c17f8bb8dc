"""Workflows that fork (tests/integration/test_fork.py): what a forked child of a runner can and cannot do."""

from __future__ import annotations

import atexit
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
    structlog), emits an event, runs a step and ends by returning from the workflow function, by
    ``sys.exit(5)`` (after registering an atexit handler) or by raising: each must end the child at once with
    the status a plain Python process would have, not run the runner's epilogue. Returns the children's exit
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
                if k % 3 == 1:
                    atexit.register(print, f"child {k} atexit")
                    sys.exit(5)
                if k % 3 == 2:
                    raise ValueError(f"child {k} fails")
                return {"i am": "a child"}  # the runner must end this process, not record this as the result
            codes.append(_wait_child(pid, 30))
    finally:
        stop.set()
        thread.join()
    print()
    return {"codes": codes, "emitted": emitted[0]}


def fork_while_the_context_is_locked(ctx) -> object:
    """A parent thread holds the context's lock (as one does inside step bookkeeping) while the workflow
    forks; the child runs a step. Returns the child's exit code, or "hung"."""
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with ctx._lock:  # noqa: SLF001 - standing in for a thread of the parent that is inside ctx.step
            held.set()
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        with ctx.step("in the child"):
            print("the child's step ran")
        os._exit(0)
    code = _wait_child(pid, 20)
    release.set()
    thread.join()
    with ctx.step("in the parent"):
        pass
    return code


def _wait_child(pid: int, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:  # a hung child: say so instead of hanging the session
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hung"
        time.sleep(0.01)


_CTX = None  # the session's context, for pool workers (a fork-context Pool's workers inherit it)


def _pool_worker(i: int) -> dict:
    """In a forked pool worker: one tracked agent turn on the offline model inside a step, and a custom event."""
    import asyncio

    ctx = _CTX
    with ctx.step(f"worker {i}"):
        ctx.emit("from_worker", {"i": i, "pid": os.getpid()})
        agent = ctx.agent(f"agent{i}", "ROLE: researcher")
        answer = asyncio.run(agent.ask(f"question {i}")).body or ""
    return {"i": i, "pid": os.getpid(), "answered": bool(answer)}


def pool_of_agents(ctx, workers: int = 3, tasks: int = 6) -> list:
    """A multiprocessing Pool (fork context) whose workers each run a step with an agent turn: the parallel
    agents a power user writes. Returns what the workers returned."""
    import multiprocessing

    global _CTX
    _CTX = ctx
    with ctx.step("fan out"), multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(_pool_worker, range(tasks))


def child_large_event(ctx, size: int = 5_000_000) -> object:
    """A forked child emits one event of ``size`` characters (more than one message of the relay socket)
    and one small one after it; returns the child's exit code."""
    pid = os.fork()
    if pid == 0:
        ctx.emit("big", {"text": "y" * size})
        ctx.emit("after_big", {})
        os._exit(0)
    return _wait_child(pid, 30)


def child_asks_for_approval(ctx) -> object:
    """A forked child pauses (as a budget does) and asks for an approval: it gets an error at once for each (no
    resume or answer could reach it) and prints them; returns the child's exit code."""
    pid = os.fork()
    if pid == 0:
        try:
            ctx.wait_paused("budget", "over")
        except RuntimeError as exc:
            print(f"child pausing got: {exc}")
        try:
            ctx.approval("deploy", "may I?")
        except RuntimeError as exc:
            print(f"child got: {exc}")
            os._exit(3)
        os._exit(0)
    return _wait_child(pid, 30)


def child_outlives_the_workflow(ctx) -> int:
    """A forked child emits one event at once, then keeps running after the workflow returns (a process the
    workflow left behind); returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        ctx.emit("early", {})
        time.sleep(60)
        ctx.emit("late", {})
        os._exit(0)
    return pid


def fork_in_steps_fail_once(ctx, flag: str) -> str:
    """Two steps, each forking a child that runs a step of its own; the second fails the first time (no ``flag``
    file yet), so a resume skips the first and runs the second again, forking once more."""

    def fork_a_child_step(name: str) -> None:
        pid = os.fork()
        if pid == 0:
            with ctx.step(name):
                ctx.emit("from_child", {"name": name})
            os._exit(0)
        if _wait_child(pid, 30) != 0:
            raise RuntimeError(f"the child of {name} failed")

    with ctx.step("first"):
        fork_a_child_step("child of first")
    with ctx.step("second"):
        fork_a_child_step("child of second")
        if not os.path.exists(flag):
            with open(flag, "w"):
                pass
            raise RuntimeError("fails once")
    return "done"


def fork_in_open_step(ctx, marker: str, child_raises: bool = False) -> str:
    """Fork inside the open step ``a``; the child leaves the block (normally with ``node.result =
    "CHILD-RESULT"``, or raising when ``child_raises``), then ends. The parent waits for it and fails step ``a``
    while there is no ``marker`` file, else sets ``PARENT-RESULT``, which step ``b`` and the return value use.
    The child may not finish or checkpoint the parent's step (tests/integration/test_fork_steps.py)."""
    me = os.getpid()
    with ctx.step("a") as node:
        pid = os.fork()
        if pid == 0:
            node.result = "CHILD-RESULT"
            if child_raises:
                raise ValueError("the child fails in step a")  # forksafe.call ends it (status 1)
        else:
            code = _wait_child(pid, 30)
            if code != (1 if child_raises else 0):
                raise RuntimeError(f"the child of step a ended {code!r}")
            if not os.path.exists(marker):
                raise RuntimeError("parent failed in step a")
            node.result = "PARENT-RESULT"
    if os.getpid() != me:
        ctx.emit("child left step a", {"pid": os.getpid()})
        os._exit(0)
    with ctx.step("b") as n2:
        n2.result = node.result
    return node.result


SPAWN_SECRET = "sk-spawned-child-secret-4242"  # FAKE_API_KEY of tests/integration/test_spawned.py's daemon


def _spawned_worker(i: int) -> dict:
    """In a worker started with ``spawn`` or ``forkserver`` (a new interpreter: nothing inherited from the runner's
    memory): ``labd.context()``, a step with a custom event, an agent turn through ``ctx.agent`` and one by a plain
    ``ag2.Agent``; whether the session's secret reached the context, and whether it reached the environment."""
    import asyncio

    import labd

    ctx = labd.context()
    with ctx.step(f"worker {i}"):
        ctx.emit("from_worker", {"i": i, "pid": os.getpid()})
        answer = asyncio.run(ctx.agent(f"agent{i}", "ROLE: researcher").ask(f"question {i}")).body or ""
        from ag2 import Agent

        from labd.runner.agents.offline import OfflineModelConfig

        plain = asyncio.run(Agent(f"plain{i}", "You answer.", config=OfflineModelConfig()).ask("hello")).body or ""
    with open("/proc/self/environ", "rb") as f:
        environ = f.read()
    return {"i": i, "pid": os.getpid(), "answered": bool(answer) and bool(plain),
            "secret": ctx.secret("FAKE_API_KEY") == SPAWN_SECRET, "in_env": SPAWN_SECRET.encode() in environ}


def spawned_agents(ctx, method: str = "spawn", workers: int = 2, tasks: int = 4) -> list:
    """A Pool of ``method`` workers (spawn or forkserver) each running :func:`_spawned_worker`."""
    import multiprocessing

    with ctx.step("fan out"), multiprocessing.get_context(method).Pool(workers) as pool:
        return pool.map(_spawned_worker, range(tasks))


def _spawned_asks() -> list:
    """In a spawned worker: asking for an approval and pausing both fail at once (no answer could reach it)."""
    import labd

    ctx = labd.context()
    out = []
    for ask in (lambda: ctx.approval("deploy", "may I?"), lambda: ctx.wait_paused("budget", "over")):
        try:
            ask()
            out.append("no error")
        except RuntimeError as exc:
            out.append(str(exc))
    return out


def spawned_asks(ctx) -> list:
    """One spawn worker that asks for an approval and to pause; returns what each raised."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_spawned_asks)


def _step_in_spawned(name: str) -> str:
    """In a spawned worker: one step named ``name``; then, in a process it forks, one more (``name`` + " fork")."""
    import labd

    ctx = labd.context()
    with ctx.step(name):
        pass
    pid = os.fork()
    if pid == 0:
        with ctx.step(f"{name} fork"):
            pass
        os._exit(0)
    os.waitpid(pid, 0)
    return name


def forks_and_spawns(ctx) -> list:
    """A forked child runs a step and starts a spawn worker that runs one (and forks, see :func:`_step_in_spawned`);
    the runner starts one too: every step must get a node id of its own."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    pid = os.fork()
    if pid == 0:
        with ctx.step("forked"), spawn.Pool(1) as pool:
            pool.apply(_step_in_spawned, ("spawned from the fork",))
        os._exit(0)
    _wait_child(pid, 120)
    with spawn.Pool(1) as pool:
        return [pool.apply(_step_in_spawned, ("spawned from the runner",))]
