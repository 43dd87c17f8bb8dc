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
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from labd.runner.agents.context import current_agent, current_call
from labd.runner.context import current_node
from labd.runner.files import FileTracker
from labd.runner.sandbox import Sandbox, SandboxRefused, session_sandbox
from labd.runner.withhold import head_cut

__all__ = ["make_run_code", "MAX_OUTPUT", "MAX_CODE", "CODE_TOOL", "KEPT_HEAD", "KEPT_TAIL"]

CODE_TOOL = "run_code"  # the tool's name, as agents see it (and as policy rules name it: a `code` action)

MAX_OUTPUT = 20_000
#: of a program's output the record keeps this many bytes from its start and from its end (:class:`_Kept`): a
#: ``code.execution`` event fits in one message, and what fed the model is always there
KEPT_HEAD = KEPT_TAIL = 2 << 20
#: the longest program run (bytes): it goes as one argument (``python -c``), which Linux takes up to 128 KiB
#: (MAX_ARG_STRLEN), the sandbox's own words included
MAX_CODE = 120 << 10
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
        try:
            argv = sb.wrap(_COMMANDS[language](code), str(workdir))
        except SandboxRefused as exc:
            return not_run(str(exc))
        with files.executing():  # other scans until the exact one below leave its files to it
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, cwd=workdir, env=dict(os.environ), stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=False)
            except OSError as exc:  # e.g. no process left under the session's --procs: told, as a program's failure
                return not_run(f"could not start it: {exc.strerror or exc}")
            kept = _Kept()
            reader = asyncio.ensure_future(kept.read(proc.stdout))  # type: ignore[arg-type]  # a PIPE: never None
            try:
                await asyncio.wait_for(asyncio.gather(proc.wait(), asyncio.shield(reader)), timeout)
                rc = proc.returncode if proc.returncode is not None else -1
                late = ""
            except TimeoutError:
                proc.kill()
                await proc.wait()
                rc, late = -9, f"\n(timed out after {timeout:g}s)"
                try:  # what it wrote before the kill; a child of it may still hold the pipe open
                    await asyncio.wait_for(asyncio.shield(reader), 5.0)
                except TimeoutError:
                    reader.cancel()
            full = kept.text() + late
            text = full  # what the model gets back is cut; the record keeps everything (long texts become blobs)
            if len(text) > MAX_OUTPUT:  # the model's copy ends up in later requests: never cut inside a secret
                cut = head_cut(text, MAX_OUTPUT)
                text = text[:cut] + f"\n… ({len(text) - cut} more characters)"
            payload: dict[str, Any] = {"agent": current_agent.get() or "?", "language": language, "code": code,
                                       "exit_code": rc, "output": full, "duration": time.monotonic() - start,
                                       "sandbox": sb.status.level}
            if kept.dropped:
                payload["output_dropped"] = kept.dropped
            call = current_call.get()
            if call:
                payload["call_id"] = call
            emit("code.execution", payload, current_node.get())
            files.scan(current_node.get(), agent=payload["agent"], tool="run_code", exact=True)
        return text if rc == 0 else f"{text}\n[exit code: {rc}]"

    return run_code


class _Kept:
    """A program's output as the record keeps it: its first :data:`KEPT_HEAD` and last :data:`KEPT_TAIL` bytes, the
    bytes between them counted (``dropped``). The runner read all of it into memory and recorded it in one event: a
    program printing 17 MiB had its whole ``code.execution`` (code, exit code, output) replaced by
    ``event.truncated``, as an event must fit in one message, and 100 MB of output took the runner to 629 MB."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.dropped = 0

    async def read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(1 << 16):
            room = KEPT_HEAD - len(self.head)
            if room > 0:
                self.head += chunk[:room]
                chunk = chunk[room:]
            if not chunk:
                continue
            self.tail.append(chunk)
            self.tail_size += len(chunk)
            while self.tail_size - len(self.tail[0]) >= KEPT_TAIL:  # whole chunks the tail no longer needs
                self.tail_size -= len(first := self.tail.popleft())
                self.dropped += len(first)

    def text(self) -> str:
        tail = b"".join(self.tail)
        if len(tail) > KEPT_TAIL:
            self.dropped += len(tail) - KEPT_TAIL
            tail = tail[-KEPT_TAIL:]
            self.tail, self.tail_size = deque([tail]), len(tail)
        gap = f"\n… [{self.dropped:,} bytes of output not recorded]\n".encode() if self.dropped else b""
        return (bytes(self.head) + gap + tail).decode("utf-8", "backslashreplace")
