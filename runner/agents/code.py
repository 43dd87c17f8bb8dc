"""Code execution as a tool: ``run_code(code, language)`` in the session's work directory.

Runs as a child process of the runner, so it inherits the runner's cleaned environment (no secrets)
and its output is returned to the agent, not mixed into the session's stdout. The program runs
confined by the session's sandbox (:mod:`labd.runner.sandbox`): writes only in the work directory and a
private tmp, no labd state or credential files, no network unless the session asked for it. When the
daemon requires a sandbox and none works, the program is not run and the agent is told why. Every execution is
recorded as a ``code.execution`` event (code, exit code, output), attributed to the calling agent.

Executions of one session run one at a time, each between two scans of the work directory: the scan
before takes what others wrote meanwhile (attributed, or marked ambiguous, by the usual rules), the scan
after credits what appeared during the execution to it exactly, and other scans meanwhile (a concurrent step's end
or tool call) leave the work directory alone (:meth:`~labd.runner.files.FileTracker.executing`). That is what
makes file attribution exact when steps run concurrently (they share the work directory, and a scan cannot tell
which of two overlapping programs wrote a file); a concurrent step's own Python writing at that very moment is the
one case this cannot tell apart.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from labd.runner.agents.context import current_agent, current_call
from labd.runner.agents.kept_output import KeptOutput
from labd.runner.context import current_node
from labd.runner.files import FileTracker
from labd.runner.sandbox import Sandbox, SandboxRefused, session_sandbox
from labd.runner.withhold import head_cut

__all__ = ["make_run_code", "MAX_OUTPUT", "MAX_CODE", "CODE_TOOL"]

CODE_TOOL = "run_code"  # the tool's name, as agents see it (and as policy rules name it: a `code` action)

MAX_OUTPUT = 20_000
#: the longest program run (bytes): it goes as an argument of its own (``python -c``), which Linux takes up to
#: 128 KiB with its terminating NUL (MAX_ARG_STRLEN)
MAX_CODE = (128 << 10) - 1
#: after a program ended, how long its output is read on while a process it started keeps the pipe open
OPEN_AFTER_S = 5.0
_COMMANDS = {"python": lambda code: [sys.executable, "-c", code], "bash": lambda code: ["bash", "-c", code]}


def make_run_code(emit: Callable[..., int], workdir: Path, files: FileTracker,
                  timeout: float = 300.0, sandbox: Sandbox | None = None,
                  gate: Callable[[str, str, bool], Awaitable[str | None]] | None = None) -> Callable[..., Any]:
    """Build the ``run_code`` tool function bound to a session (confined by ``sandbox``, by default the
    runner's own). ``gate(code, language, network)``: the session's policy, asked before each execution (None:
    run it; a text: the refusal returned instead)."""
    locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    async def run_code(code: str, language: str = "python") -> str:
        """Run a Python or bash program in the working directory; returns its output (and exit code if non-zero)."""
        if language not in _COMMANDS:
            return f"unsupported language {language!r}; use one of: {', '.join(_COMMANDS)}\n[exit code: 2]"
        if gate is not None:  # before the lock: an approval may wait for a human, other executions need not
            refused = await gate(code, language, (sandbox or session_sandbox()).network)
            if refused is not None:
                return refused
        loop = asyncio.get_running_loop()
        lock = locks.setdefault(loop, asyncio.Lock())
        async with lock:
            return await _execute(code, language)

    async def _execute(code: str, language: str) -> str:
        files.scan(files.step_of(current_node.get()))  # what others wrote before this execution
        start = time.monotonic()
        sb = sandbox or session_sandbox()

        def not_run(why: str) -> str:
            text = f"not run: {why}"
            emit("code.execution", {"agent": current_agent.get() or "?", "language": language, "code": code,
                                    "exit_code": 126, "output": text, "duration": time.monotonic() - start,
                                    "sandbox": sb.status.level}, current_node.get())
            return f"{text}\n[exit code: 126]"

        size = len(code.encode("utf-8", "surrogatepass"))
        if size > MAX_CODE:  # the kernel takes one argument of at most 128 KiB: the exec failed, and the tool raised
            return not_run(f"the program is {size:,} bytes; at most {MAX_CODE:,} can be run at once (split it into "
                           "modules written to files, and run a short program that imports them)")
        if "\0" in code:  # no argument can hold one: the exec raised ValueError out of the tool
            return not_run("the program holds a NUL character, which no program text passed to python or bash may")
        try:
            argv = sb.wrap(_COMMANDS[language](code), str(workdir))
        except SandboxRefused as exc:
            return not_run(str(exc))
        except OSError as exc:  # the sandbox's policy file could not be written (a full disk)
            return not_run(f"its sandbox could not be set up: {exc.strerror or exc}")
        with files.executing():  # other scans until the exact one below leave its files to it
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, cwd=workdir, env=dict(os.environ), stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=False)
            except OSError as exc:  # e.g. no process left under the session's --procs: told, as a program's failure
                return not_run(f"could not start it: {exc.strerror or exc}")
            kept = KeptOutput()
            reader = asyncio.ensure_future(kept.read(proc.stdout))  # type: ignore[arg-type]  # a PIPE: never None
            rc, late = await _finish(proc, reader, timeout)
            output, dropped = kept.text()
            full = output + late
            text = full  # what the model gets back is cut; the record keeps everything (long texts become blobs)
            if len(text) > MAX_OUTPUT:  # the model's copy ends up in later requests: never cut inside a secret
                cut = head_cut(text, MAX_OUTPUT)
                text = text[:cut] + f"\n… ({len(text) - cut} more characters)"
            payload: dict[str, Any] = {"agent": current_agent.get() or "?", "language": language, "code": code,
                                       "exit_code": rc, "output": full, "duration": time.monotonic() - start,
                                       "sandbox": sb.status.level}
            if dropped:
                payload["output_dropped"] = dropped
            call = current_call.get()
            if call:
                payload["call_id"] = call
            emit("code.execution", payload, current_node.get())
            files.scan(current_node.get(), agent=payload["agent"], tool="run_code", exact=True)
        return text if rc == 0 else f"{text}\n[exit code: {rc}]"

    return run_code


async def _finish(proc: asyncio.subprocess.Process, reader: asyncio.Future[None], timeout: float) -> tuple[int, str]:
    """Wait for the program's end (killed past ``timeout``) while ``reader`` reads its output, then for the rest of
    its output, :data:`OPEN_AFTER_S` at most; returns its exit code (-9: killed) and what to add to the output."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # Not Process.wait(): it also waits for the output pipe to close, which a process the program started in the
    # background may hold for ever (the tool then waited out the timeout, and said -9 of a program that had ended);
    # the exit shows in returncode, looked at while the output is read
    while proc.returncode is None and (left := deadline - loop.time()) > 0:
        if reader.done():
            await asyncio.sleep(min(0.1, left))
        else:
            await asyncio.wait((reader,), timeout=min(0.1, left))
    timed_out = proc.returncode is None
    late = f"\n(timed out after {timeout:g}s)" if timed_out else ""
    if timed_out:
        proc.kill()
        for _ in range(500):  # SIGKILL: reaped within moments
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.01)
    if not reader.done():  # what it wrote before its end; a process it started may still hold the pipe
        await asyncio.wait((reader,), timeout=OPEN_AFTER_S)
        if not reader.done():
            reader.cancel()
            _close_pipes(proc)
            late += "\n(its output was still open after it ended: a process it started holds it; not read further)"
    return (-9 if timed_out else proc.returncode if proc.returncode is not None else -1), late


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    """Close the pipe of a reading given up (left open, it was reported at the loop's close)."""
    transport = getattr(proc, "_transport", None)  # asyncio's Process keeps it there, and offers no close
    if transport is not None:
        transport.close()
