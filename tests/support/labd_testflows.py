"""Workflows used by the integration tests, including deliberately misbehaving ones.

They are *user* workflows (loaded by import path), so the tests also cover that path. They contain no
tracking code: only prints, steps and plain Python.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import time

STATE = {"owner": None}  # a module global each session overwrites with its own tag


def isolation(ctx, tag: str, lines: int = 2000) -> dict:
    """Change every kind of process-global state, print heavily from Python, C level and a child."""
    STATE["owner"] = tag
    os.makedirs(f"cwd-{tag}", exist_ok=True)
    os.chdir(f"cwd-{tag}")
    os.environ["ISO_TAG"] = tag
    logging.basicConfig(level=logging.DEBUG, format=f"{tag} %(message)s", force=True)
    logging.getLogger("iso").warning("logging configured by %s", tag)
    with ctx.step("print"):
        for i in range(lines):
            print(f"{tag} py {i}")
            if i % 100 == 0:
                os.write(1, f"{tag} fd {i}\n".encode())
                time.sleep(0.001)  # let the other session interleave
    with ctx.step("child"):
        subprocess.run([sys.executable, "-c",
                        f"import os\nfor i in range(200): print('{tag} child', i, os.environ['ISO_TAG'])"],
                       check=True)
    return {"owner": STATE["owner"], "cwd": os.getcwd(), "env": os.environ["ISO_TAG"]}


def memory_hog(ctx, mb: int = 600, step_mb: int = 16) -> None:
    """Allocate (and touch) memory until killed."""
    hoard = []
    with ctx.step("allocate"):
        for i in range(mb // step_mb):
            hoard.append(bytearray(os.urandom(1024)) * (step_mb * 1024))
            print(f"allocated {(i + 1) * step_mb} MiB", flush=True)
            time.sleep(0.02)
    time.sleep(60)


def memfd_hog(ctx, mb: int = 300) -> None:
    """Write ``mb`` MiB into a memfd, never mapped (no page of it in any page table, so not in PSS), then wait."""
    fd = os.memfd_create("hoard")
    chunk = b"\1" * (1 << 20)
    for i in range(mb):
        os.write(fd, chunk)
        if i % 16 == 15:
            print(f"memfd holds {i + 1} MiB", flush=True)
    time.sleep(60)


def cpu_hog(ctx, seconds: float = 30.0) -> float:
    """Spin on the CPU for ``seconds`` of wall time; returns the CPU seconds it got."""
    start = time.monotonic()
    x = 0
    while time.monotonic() - start < seconds:
        for _ in range(10_000):
            x += 1
    return time.process_time()


def stubborn(ctx) -> None:
    """Ignores SIGTERM and never checks for cancellation: only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ignoring SIGTERM", flush=True)
    while True:
        time.sleep(0.05)


def plan_after_files(ctx, n: int = 5200) -> dict:
    """A planned session whose plan (its result, in its last event) comes after ``n`` file events: step 1 writes
    ``n`` files, step 2 nothing."""
    with ctx.step("step 1: write the files"):
        for i in range(n):
            (ctx.workdir / f"f{i:05d}.txt").write_text(str(i))
    with ctx.step("step 2: sum up"):
        print("summed up")
    return {"plan": [{"agent": "engineer", "goal": "write every file"},
                     {"agent": "writer", "goal": "sum it up", "depends_on": [0]}]}


def counts_sigterms(ctx) -> None:
    """Never checks for cancellation; prints ``sigterm N`` for the N-th SIGTERM and goes on: only SIGKILL ends it."""
    got = []

    def on_term(signum, frame) -> None:
        got.append(signum)
        print(f"sigterm {len(got)}", flush=True)

    signal.signal(signal.SIGTERM, on_term)
    print("counting SIGTERMs", flush=True)
    while True:
        time.sleep(0.05)


def ticker(ctx, n: int = 50, delay: float = 0.05) -> int:
    """Emit a step and a line every ``delay`` seconds, ``n`` times."""
    for i in range(n):
        with ctx.step(f"tick {i}"):
            print(f"tick {i}", flush=True)
            ctx.emit("tick", {"i": i})
        time.sleep(delay)
    return n


def flood(ctx, lines: int = 100_000) -> int:
    """Print ``lines`` numbered lines as fast as possible."""
    w = sys.stdout.write
    for i in range(lines):
        w(f"L{i}\n")
    return lines


def needs_param(ctx, count: int, ratio: float = 0.5) -> float:
    """Has a required parameter."""
    return count * ratio


def shapes(ctx, tags: set[str], pair: tuple[int, int] = (0, 0), either: int | str = 0) -> dict:
    """Set, tuple and union parameters: what the workflow received, and as which types."""
    return {"tags": sorted(tags), "pair": list(pair), "either": either,
            "types": [type(tags).__name__, type(pair).__name__, type(either).__name__]}


def env_report(ctx) -> dict:
    """Reports which secrets the workflow (and a child it runs) can find, in os.environ or in /proc."""
    print("visible:", sorted(k for k in os.environ if "KEY" in k or "TOKEN" in k), flush=True)
    from pathlib import Path

    procs = [Path(f"/proc/{p}/environ").read_bytes() for p in (os.getpid(), os.getppid())]
    child = subprocess.run(["bash", "-c", "cat /proc/self/environ /proc/$PPID/environ"], capture_output=True).stdout
    return {"has_key": "FAKE_API_KEY" in os.environ, "secret_via_ctx": ctx.secret("FAKE_API_KEY") is not None,
            "in_proc": any(b"sk-very-secret" in p for p in procs), "in_child": b"sk-very-secret" in child,
            "db_url_visible": "LABD_DB" in os.environ, "db_url_secret": ctx.secret("LABD_DB") is not None}


def same_names(ctx, n: int = 3) -> int:
    """A loop whose steps all share one name ("iter")."""
    total = 0
    for i in range(n):
        with ctx.step("iter"):
            total += i
    return total


def leak_secret(ctx) -> str:
    """A careless workflow: prints a secret, logs it, names a step after it, emits it, returns it, fails with it
    in a child's output (labd must record none of it)."""
    import logging

    value = ctx.secret("FAKE_API_KEY") or ""
    print(f"using key {value}", flush=True)
    print(f"quoted \"{value}\" and escaped {value!r}", flush=True)
    logging.getLogger("careless").warning("the key is %s", value)
    with ctx.step(f"call with {value}"):
        ctx.emit("debug", {"key": value, "nested": [{"k": value}]})
    subprocess.run(["echo", f"child sees {value}"], check=True)
    return value


def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


def agent_flow(ctx, task: str = "Step 7 of 7: count and compute") -> str:
    """A user workflow with agents and tools but not one line of tracking code (and no steps)."""
    import asyncio

    async def body() -> str:
        engineer = ctx.agent("my_engineer", "ROLE: engineer\nSolve it.", tools=[word_count], code_execution=True)
        helper = ctx.agent("my_helper", "Answer briefly.")
        first = await engineer.ask(task)
        second = await helper.ask(f"Summarise: {first.body}")
        return second.body

    return asyncio.run(body())


def delegation(ctx) -> str:
    """A boss agent delegates to a writer sub-agent (ag2 agent-as-tool) and asks a human through a tool;
    models are scripted with ag2's own TestConfig. No tracking code."""
    import asyncio

    from ag2 import Context
    from ag2.events import ToolCallEvent
    from ag2.testing import TestConfig

    async def ask_human(question: str, ctx: Context) -> str:
        """Ask the human a question."""
        return await ctx.input(question, timeout=60)

    async def body() -> str:
        writer = ctx.agent("writer", "You write.", model=TestConfig("A poem about limits."))
        boss = ctx.agent(
            "boss", "You lead.", tools=[writer.as_tool(description="Delegate writing"), ask_human],
            model=TestConfig(ToolCallEvent("task_writer", arguments='{"objective": "a poem"}'),
                             ToolCallEvent("ask_human", arguments='{"question": "Publish the poem?"}'),
                             "Published.", raise_tool_errors=False))
        return (await boss.ask("Get a poem written and ask before publishing.")).body

    return asyncio.run(body())


def pool_rounds(ctx, rounds: int = 6) -> int:
    """multiprocessing pools created and terminated in a loop (workers are forked from the runner)."""
    import multiprocessing

    total = 0
    for _ in range(rounds):
        pool = multiprocessing.get_context("fork").Pool(2)
        total += sum(pool.map(abs, range(-10, 0)))
        pool.terminate()
        pool.join()
    return total


def fifo_in_workdir(ctx) -> str:
    """Leaves a FIFO (and a link to /dev/zero) in the work directory: the file scan must not open them."""
    with ctx.step("make"):
        os.mkfifo("pipe")
        os.symlink("/dev/zero", "zeros")
        with open("real.txt", "w") as f:
            f.write("real\n")
    return "ok"


def leave_children(ctx) -> int:
    """Starts a long-running child process and returns without waiting for it."""
    child = subprocess.Popen(["sleep", "300"])
    print(f"child {child.pid}", flush=True)
    return child.pid


def custom_approval(ctx) -> str:
    """An approval with the workflow's own options."""
    d = ctx.approval("choose", "Which colour?", options=["red", "green"])
    return d.decision


def bad_approval(ctx) -> None:
    """An approval whose prompt is not text: the workflow gets an error at once (no hanging)."""
    ctx.approval("review", 12345, timeout=1)  # type: ignore[arg-type]


def hostile_code(ctx, programs: list) -> str:
    """An agent runs each program with its run_code tool (the model is scripted with ag2's TestConfig):
    the path LLM-written code takes. Used by the sandbox tests with deliberately hostile programs."""
    import asyncio
    import json

    from ag2.events import ToolCallEvent
    from ag2.testing import TestConfig

    calls = [ToolCallEvent("run_code", arguments=json.dumps({"code": p, "language": "python"})) for p in programs]

    async def body() -> str:
        engineer = ctx.agent("engineer", "You run code.", code_execution=True,
                             model=TestConfig(*calls, "done", raise_tool_errors=False))
        return (await engineer.ask("Run the programs.")).body

    return asyncio.run(body())


def runner_reads(ctx, paths: list) -> dict:
    """The runner itself (workflow code, not executed code) tries to read each path."""
    out = {}
    for p in paths:
        try:
            with open(p, "rb") as f:
                f.read(1)
            out[p] = "read"
        except OSError as exc:
            out[p] = type(exc).__name__
    return out


def runner_writes(ctx, paths: list) -> dict:
    """The runner itself (workflow code) tries to append to each path (a file another labd reads)."""
    out = {}
    for p in paths:
        try:
            with open(p, "a") as f:
                f.write("")
            out[p] = "written"
        except OSError as exc:
            out[p] = type(exc).__name__
    return out


def writes_files(ctx) -> int:
    """Write a text file and a nested one inside a step (recorded as the step's files)."""
    from pathlib import Path

    with ctx.step("write"):
        Path("report.md").write_text("# Report\n\nall good\n")
        Path("data").mkdir(exist_ok=True)
        Path("data/values.csv").write_text("x,y\n1,2\n")
    return 2


def mcp_agent(ctx) -> str:
    """An agent with the tools of the configured MCP server `adder`; its scripted model calls `adder_add`."""
    from ag2.events import ToolCallEvent
    from ag2.testing import TestConfig

    model = TestConfig(ToolCallEvent(name="adder_add", arguments='{"a": 2, "b": 40}'), "the sum is 42")

    async def ask() -> str:
        agent = ctx.agent("calculator", "You add numbers.", model=model, mcp=["adder"])
        return (await agent.ask("2 + 40?")).body

    with ctx.step("add"):
        return ctx.run(ask())
ESCAPE = """
import os, sys, time
if os.fork():
    os._exit(0)           # the intermediate parent exits: the grandchild is an orphan
os.setsid()               # own session and process group: a signal to the runner's group misses it
print(os.getpid(), flush=True)
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):      # let go of the parent's pipes, as a daemon does (else run() waits for their EOF)
    os.dup2(null, fd)
time.sleep(300)
"""


def escapee(ctx) -> int:
    """Starts a setsid + double-forked grandchild (pid printed as 'escapee <pid>') and keeps running."""
    out = subprocess.run([sys.executable, "-c", ESCAPE], capture_output=True, text=True, check=True)
    pid = int(out.stdout.split()[0])
    print(f"escapee {pid}", flush=True)
    time.sleep(300)
    return pid


def clone_parent(ctx, life: int = 120) -> int:
    """A raw ``clone(CLONE_PARENT)`` (x86_64 system call 56): the child, a sibling of the runner, calls setsid and
    execs ``sleep`` with an empty environment (no marker left). Prints ``cloned <pid> errno <errno>`` and waits."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pid = libc.syscall(56, 0x00008000 | signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os.setsid()
        os.execve("/bin/sleep", ["sleep", str(life)], {})
    print(f"cloned {pid} errno {ctypes.get_errno() if pid < 0 else 0}", flush=True)
    time.sleep(300)
    return pid


def fork_storm(ctx, children: int = 2000) -> int:
    """Starts ``children`` sleeping processes as fast as it can, then waits."""
    procs = []
    for i in range(children):
        procs.append(subprocess.Popen(["sleep", "300"]))
        if i % 100 == 0:
            print(f"started {i}", flush=True)
    time.sleep(300)
    return len(procs)


def sleepers(ctx, children: int = 300) -> int:
    """Starts ``children`` idle ``sleep`` processes, says so, and waits."""
    procs = [subprocess.Popen(["sleep", "300"]) for _ in range(children)]
    print(f"sleepers {len(procs)}", flush=True)
    time.sleep(300)
    return len(procs)


def busy_children(ctx, seconds: float = 4.0) -> float:
    """Runs short-lived CPU-bound children one after another; returns their CPU time / wall time (percent)."""
    start, t0 = time.monotonic(), os.times()
    while time.monotonic() - start < seconds:
        subprocess.run(["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"], check=True)
    t1 = os.times()
    used = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
    return round(used / (time.monotonic() - start) * 100, 1)
def review_once(ctx) -> str:
    """One approval with the built-in options; prints the answer (``labd top`` answers it in place)."""
    with ctx.step("draft"):
        print("draft ready", flush=True)
    d = ctx.approval("review", "Publish the draft?", options=["approve", "reject", "modify"])
    with ctx.step("publish"):
        print(f"decision={d.decision} feedback={d.feedback}", flush=True)
    return d.decision


def long_lines(ctx, lines: int = 30, width: int = 100_000) -> None:
    """``lines`` lines of output, each ``line N `` followed by ``width`` characters."""
    for i in range(lines):
        print(f"line {i} " + "x" * width, flush=True)


def review_code(ctx, lines: int = 200) -> str:
    """One approval of code to run, as a policy asks it (approve or reject only): the code, ``lines`` lines ending in
    ``# the last line``, is in the approval's context, past what a list of approvals carries whole at 200 lines."""
    code = "\n".join(f"print({i})  # step {i} of the program" for i in range(lines - 1)) + "\n# the last line"
    d = ctx.approval("code", "Run this python code?", options=["approve", "reject"],
                     context={"language": "python", "code": code})
    print(f"decision={d.decision}", flush=True)
    return d.decision


def two_reviews(ctx) -> str:
    """Two approvals one after the other (approve / reject); prints each answer."""
    first = ctx.approval("code", "Run the first program?", options=["approve", "reject"],
                         context={"language": "python", "code": "print('first')"})
    print(f"first={first.decision}", flush=True)
    second = ctx.approval("code", "Run the second program?", options=["approve", "reject"],
                          context={"language": "python", "code": "print('second')"})
    print(f"second={second.decision}", flush=True)
    return second.decision


def _count_run(counter: str, name: str) -> int:
    """Count an execution of ``name`` in a file under ``counter`` (outside the work directory: a side channel
    that survives resume and restore)."""
    path = os.path.join(counter, name)
    n = 1
    if os.path.exists(path):
        with open(path) as f:
            n = int(f.read()) + 1
    with open(path, "w") as f:
        f.write(str(n))
    return n


def durable_four(ctx, counter: str, fail_three: int = 1, sleep_three: float = 0.0) -> dict:
    """Four durable steps, each counting its executions under ``counter``; step three fails its first
    ``fail_three`` runs (after leaving a mess in the work directory) and reports the files it found."""
    work = ctx.workdir
    with ctx.step("one") as one:
        _count_run(counter, "one")
        (work / "a.txt").write_text("one")
        one.result = {"x": 1}
    with ctx.step("two") as two:
        _count_run(counter, "two")
        (work / "a.txt").write_text("two")
        (work / "sub").mkdir(exist_ok=True)
        (work / "sub" / "b.txt").write_text("b")
        two.result = one.result["x"] + 1
    with ctx.step("three") as three:
        n = _count_run(counter, "three")
        seen = {str(p.relative_to(work)): p.read_text() for p in sorted(work.rglob("*.txt"))}
        (work / "a.txt").write_text("three")
        (work / "junk.txt").write_text("junk")
        if sleep_three:
            time.sleep(sleep_three)
        if n <= fail_three:
            raise RuntimeError(f"step three fails on run {n}")
        three.result = {"seen": seen, "two": two.result}
    with ctx.step("four") as four:
        _count_run(counter, "four")
        four.result = three.result
    return four.result



def durable_diverge(ctx, counter: str) -> str:
    """Step names depend on state outside steps (a counter file): a resume asks for another step than the
    record holds at the same position — a divergence."""
    n = _count_run(counter, "top")
    with ctx.step("first" if n == 1 else "other"):
        print("first step", flush=True)
    with ctx.step("second"):
        if n == 1:
            raise RuntimeError("fail once")
    return "done"
def replay_probe(ctx, source: str = "", steps: int = 2, model: str = "default", persona: str = "") -> list:
    """``steps`` steps, each asking a researcher and writing its answer to ``answer_<i>.txt``; the first
    question carries the text of the file ``source`` (outside the work directory), so changing that file
    changes what a replay of the session asks (labd replay's divergence report). With ``persona`` (a file), the
    researcher's system prompt is that file's text: changing it changes the request and not its input."""
    from pathlib import Path

    note = Path(source).read_text().strip() if source else "none"
    system = Path(persona).read_text() if persona else None

    async def body() -> list:
        answers = []
        for i in range(1, steps + 1):
            with ctx.step(f"ask {i}"):
                agent = ctx.role("researcher", model=model) if system is None else \
                    ctx.agent("researcher", system, model=model)
                question = f"Step {i} of {steps}: " + (f"what follows from {note}?" if i == 1 else "go on")
                reply = (await agent.ask(question)).body or ""
                Path(f"answer_{i}.txt").write_text(reply + "\n")
                answers.append(reply)
        return answers

    return ctx.run(body())


def resumable_asks(ctx, counter: str, fail_second: int = 1) -> list:
    """Three steps, each asking a researcher the same question on every run; the second step fails its first
    ``fail_second`` runs *after* its LLM call (counted under ``counter``), so a resume runs it, and its call,
    again: a record with a superseded attempt (labd replay / compare of a resumed session)."""
    from pathlib import Path

    async def body() -> list:
        answers = []
        for i in range(1, 4):
            with ctx.step(f"ask {i}") as node:
                agent = ctx.role("researcher")
                reply = (await agent.ask(f"Step {i} of 3: go on")).body or ""
                if i == 2 and _count_run(counter, "ask 2") <= fail_second:
                    raise RuntimeError("the second step fails after its call")
                Path(f"answer_{i}.txt").write_text(reply + "\n")
                node.result = reply
            answers.append(node.result)  # a step a resume skipped gives its recorded result here
        return answers

    return ctx.run(body())


def replay_steps(ctx, source: str) -> str:
    """Two steps without agents; the second one's name is the text of the file ``source``, so changing the file
    makes a replay's second step differ from the recorded one (labd replay's step divergence)."""
    from pathlib import Path

    label = Path(source).read_text().strip()
    with ctx.step("prepare"):
        pass
    with ctx.step(f"analyse {label}"):
        Path("label.txt").write_text(label + "\n")
    return label


def reads_stdin(ctx) -> dict:
    """Prints a line, then reads stdin as a script would (``sys.stdin.read``, ``input``) and says what fd 0 is."""
    print("important output line", flush=True)
    read = sys.stdin.read()
    try:
        input()
        eof = False
    except EOFError:
        eof = True
    st = os.fstat(0)
    return {"read": read, "input_eof": eof, "fd0": os.readlink("/proc/self/fd/0"),
            "fd0_is_pipe": stat.S_ISFIFO(st.st_mode)}


def leaves_work_behind(ctx, delay: float = 0.5) -> str:
    """Returns while a non-daemon thread it started still works (it writes ``from_thread.txt`` and prints after
    ``delay``), with an ``atexit`` handler registered and an executor never shut down (its idle worker is a
    non-daemon thread too): ``python script.py`` would wait for the thread, then run the handler."""
    import atexit
    import concurrent.futures
    import threading

    def work() -> None:
        time.sleep(delay)  # the scenario: work still going on when the workflow returns
        with open("from_thread.txt", "w") as f:
            f.write("written after the workflow returned\n")
        print("thread done", flush=True)

    threading.Thread(target=work, name="late-writer").start()
    atexit.register(lambda: print("atexit ran", flush=True))
    concurrent.futures.ThreadPoolExecutor(1).submit(print, "executor job", flush=True).result()
    return "returned"


def busy_at_return(ctx, what: str = "executor") -> str:
    """Returns while an executor never shut down still runs a long job (``executor``), or with an atexit handler
    that takes long (``atexit``)."""
    import atexit
    import concurrent.futures

    if what == "executor":
        concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="long-job").submit(time.sleep, 600)
    else:
        def slow() -> None:
            print("atexit begins", flush=True)
            time.sleep(600)

        atexit.register(slow)
    return "returned"


def thread_never_ends(ctx) -> str:
    """Returns while a non-daemon thread it started runs for ever."""
    import threading

    def spin() -> None:
        while True:
            time.sleep(0.05)

    threading.Thread(target=spin, name="spinner").start()
    return "returned"


def partial_at_step_end(ctx, pause: float = 0.5) -> None:
    """Each step ends with output that has no newline (a progress line, on stdout and on stderr); the next step
    starts after a pause longer than the capture's partial-line flush."""
    with ctx.step("one"):
        print("progress 50%", end="", flush=True)
        print("warming up", end="", file=sys.stderr, flush=True)
    time.sleep(pause)  # the scenario (the workflow goes on with other work), not synchronisation
    with ctx.step("two"):
        print("step two line")
        print("done 100%", end="", flush=True)


def fragmented_lines(ctx, long_kib: int = 0, unterminated: bool = False) -> None:
    """Lines written in fragments, each its own ``output`` event (a step boundary sends what was written):
    stdout "first line", then "progress: 10%...done" in four fragments and its newline apart, then "last line";
    stderr "warn: disk low" in two fragments around the progress line. With ``long_kib``, then one stdout line of
    that many KiB (many 64 KiB chunks) before "last line"; with ``unterminated``, "last line" has no newline."""
    print("first line")
    with ctx.step("warn"):
        print("warn: ", end="", file=sys.stderr, flush=True)
    for piece in ("progress: ", "10%", "...", "done"):
        with ctx.step(piece):
            print(piece, end="", flush=True)
    with ctx.step("warned"):
        print("disk low", file=sys.stderr, flush=True)
    with ctx.step("newline"):
        print(flush=True)
    if long_kib:
        with ctx.step("long"):
            sys.stdout.write("x" * (long_kib * 1024 - 1) + "\n")
            sys.stdout.flush()
    print("last line", end="" if unterminated else "\n", flush=True)


def awkward_names(ctx) -> int:
    """Write, inside a step, files whose names a URL must escape: ``report#draft`` next to ``report``, ``q?.txt``,
    ``100%.txt`` and ``sub dir/a&b#1.txt``; each file holds its own name."""
    from pathlib import Path

    names = ["report", "report#draft", "q?.txt", "100%.txt", "sub dir/a&b#1.txt"]
    with ctx.step("write"):
        Path("sub dir").mkdir(exist_ok=True)
        for name in names:
            Path(name).write_text(f"this is {name}\n")
    return len(names)


def deep(ctx, n: int = 1100) -> None:
    """Steps nested ``n`` deep (past Python's recursion limit), without recursion in the workflow itself."""
    import contextlib

    with contextlib.ExitStack() as stack:
        for i in range(n):
            stack.enter_context(ctx.step(f"s{i}"))


def leave_stubborn_then_wait(ctx, seconds: float = 120.0) -> str:
    """Step ``spawn`` starts a child in a session of its own that ignores SIGTERM (it outlives the runner: the
    session's end buries it), then step ``wait`` sleeps. A resume skips ``spawn`` (completed) and waits again."""
    with ctx.step("spawn"):
        code = ("import os, signal, time; os.setsid(); signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print(os.getpid(), flush=True); time.sleep(600)")
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        pid = int(child.stdout.readline())  # type: ignore[union-attr]
        print(f"stubborn {pid}", flush=True)
    with ctx.step("wait"):
        ctx.sleep(seconds)
    return "done"


def swap_after_scan(ctx, tag: str, swap: str = "", size_mb: int = 0, hold: float = 0.0) -> str:
    """Writes ``data.txt`` in a step (recorded, a few bytes), then, in a second step that holds for ``hold``
    seconds, puts in its place what the record does not say: a FIFO (``swap="fifo"``) or a sparse file of
    ``size_mb`` MiB (``swap="sparse"``): what a session's code (or a child left running) can do to its work
    directory after the scan."""
    import time
    from pathlib import Path

    with ctx.step("write"):
        Path("data.txt").write_text(f"{tag}\n")
    if swap:
        with ctx.step("swap"):
            os.remove("data.txt")
            if swap == "fifo":
                os.mkfifo("data.txt")
            else:
                with open("data.txt", "wb") as f:
                    f.truncate(size_mb << 20)
            print("swapped", flush=True)
            time.sleep(hold)
    return tag


def fifo_objects(ctx) -> None:
    """One durable step with a result, then the workflow puts a FIFO in place of every file of its session's
    checkpoint object store (``<session>/checkpoints/objects``, which its runner may write) and fails: a resume or
    branch of it has the daemon read objects that can never be read."""
    from pathlib import Path

    with ctx.step("one") as one:
        (ctx.workdir / "a.txt").write_text("one")
        one.result = {"x": list(range(50))}
    objects = Path(ctx.workdir).parent / "checkpoints" / "objects"
    swapped = 0
    for p in sorted(objects.rglob("*")):
        if p.is_file():
            p.unlink()
            os.mkfifo(p)
            swapped += 1
    print(f"swapped {swapped}", flush=True)
    raise RuntimeError("fail, to be resumed")


def plant_seed_link(ctx, target: str) -> None:
    """One durable step, then the workflow plants ``<session>/durable.seed.json.tmp -> target`` (its runner may
    write its session directory) and fails: the daemon writes a resume's seed at that path."""
    from pathlib import Path

    with ctx.step("one") as one:
        (ctx.workdir / "a.txt").write_text("one")
        one.result = 1
    os.symlink(target, Path(ctx.workdir).parent / "durable.seed.json.tmp")
    raise RuntimeError("fail, to be resumed")


def plant_object_link(ctx, target: str) -> None:
    """Step ``a`` writes ``f.txt``, ``a2`` deletes it; then ``b`` puts a symlink to ``target`` in place of f.txt's
    checkpoint object (in its session directory, which its runner may write): a branch from ``b`` links (or, where
    a link cannot be made, copied) the objects its reused steps name, that one too."""
    import hashlib
    from pathlib import Path

    from labd.runner.checkpoint import OBJECTS_DIR, ObjectStore

    with ctx.step("a"):
        (ctx.workdir / "f.txt").write_text("planted")
    with ctx.step("a2"):
        (ctx.workdir / "f.txt").unlink()
    with ctx.step("b"):
        obj = ObjectStore(Path(ctx.workdir).parent / OBJECTS_DIR).path(hashlib.sha256(b"planted").hexdigest())
        obj.unlink()
        os.symlink(target, obj)


def fifo_spool(ctx) -> str:
    """Puts a FIFO in place of its runner's spool (``<session>/events.spool``, in its session directory, which its
    runner may write) and kills its runner (so nothing removes the spool): the daemon reads the spool of a runner
    that has ended."""
    from pathlib import Path

    from labd.runner.spool import SPOOL_NAME

    spool = Path(ctx.workdir).parent / SPOOL_NAME
    spool.unlink(missing_ok=True)
    os.mkfifo(spool)
    print("spool swapped", flush=True)
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)
    return "not reached"


def plant_work_link(ctx, target: str) -> None:
    """One durable step, then the workflow replaces its work directory by a symlink to ``target`` (which need not
    exist; its runner may write its session directory) and fails: a resume starts a runner for that work directory."""
    import shutil
    from pathlib import Path

    with ctx.step("one") as one:
        one.result = 1
    work = Path(ctx.workdir)
    os.chdir(work.parent)
    shutil.rmtree(work)
    os.symlink(target, work)
    raise RuntimeError("fail, to be resumed")


def work_link_to_home(ctx, home: str) -> str:
    """Writes ``daemon.key`` in its work directory (recorded by the step's scan), then replaces the work directory
    by a symlink to labd's ``home`` (its runner may write its session directory, never read the home): whoever serves
    the recorded file through the work directory's path then reads the home's ``daemon.key``."""
    import shutil
    from pathlib import Path

    with ctx.step("write"):
        Path("daemon.key").write_text("the session's own file\n")
    work = Path(ctx.workdir)
    os.chdir(work.parent)
    shutil.rmtree(work)
    os.symlink(home, work)
    return "ok"


def graph_rounds(ctx, rounds: int = 12, code: bool = True) -> int:
    """A phase of steps one after the other, each with an engineer's turn (a run_code call that writes
    ``step_<i>.json``, a file of the turn; without ``code``, an answer only) and a file the step writes itself: a
    graph to read the newest part of."""
    import asyncio
    from pathlib import Path

    engineer = (ctx.agent("eng", "ROLE: engineer\nSolve it.", code_execution=True) if code
                else ctx.agent("eng", "Answer briefly."))
    with ctx.step("rounds", kind="phase"):
        for i in range(1, rounds + 1):
            with ctx.step(f"round {i}"):
                asyncio.run(engineer.ask(f"Step {i} of {rounds}: compute"))
                Path(f"round_{i}.txt").write_text(str(i))
    return rounds


def a_workflow_function_with_a_rather_long_name_indeed(ctx) -> None:
    """Does nothing: its name is longer than `labd ps`'s WORKFLOW column."""


def bidi_names(ctx) -> None:
    """A file, a step and a line of output holding a right-to-left override (U+202E): read as written, the file
    ``invoice<U+202E>fdp.exe`` shows as ``invoiceexe.pdf``."""
    with ctx.step("step\u202eeman"):
        with open("invoice\u202efdp.exe", "w") as f:
            f.write("not a pdf\n")
        print("line\u202etxet", flush=True)


def newline_name(ctx) -> None:
    """Writes, in a step, a file whose name holds a line break and what would read as an activity line after it."""
    with ctx.step("write"), open("new\n  + forged.txt", "w") as f:
        f.write("x\n")


def run_code_directly(ctx, mode: str = "secret") -> str:
    """Runs one program through the agents' ``run_code`` tool, no model involved (a review's probe): ``secret``, a
    program of over 5,000 characters that quotes the session's FAKE_API_KEY (its code travels as a blob); ``flood``,
    one that prints 17 MiB, more than one message holds, then a last line; ``huge``, a program of 200 KiB, more than
    one argument may be."""
    import asyncio

    if mode == "secret":
        key = ctx.secret("FAKE_API_KEY") or ""
        code = f"x = {key!r}\n# " + "p" * 5000 + "\nprint('long ran')"
    elif mode == "huge":
        code = "x = 1\n" + ("# " + "c" * 1000 + "\n") * 200 + "print('huge ran')"
    else:
        code = "import sys\nsys.stdout.write('A' * (17 << 20))\nprint('\\nthe end')"
    return str(asyncio.run(ctx.agent_factory()._run_code(code)))[-100:]
