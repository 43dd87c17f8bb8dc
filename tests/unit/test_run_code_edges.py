"""``run_code`` at its edges: what cannot run is answered "not run" to the agent and recorded, never raised out of
the tool (which failed the whole session); a program whose background child keeps its output open ends with its
own exit code, its output read on for a few seconds only."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

import labd.runner.agents.code as code_module
from labd.runner.agents.code import MAX_CODE, make_run_code
from labd.runner.files import FileTracker


def _run(tmp_path: Path, program: str, timeout: float = 300.0) -> tuple[str, list[dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []

    def emit(kind: str, payload: dict[str, Any], *args: Any, **kwargs: Any) -> int:
        events.append((kind, payload))
        return len(events)

    run_code = make_run_code(emit, tmp_path, FileTracker(tmp_path, emit), timeout=timeout)
    got = asyncio.run(run_code(program))
    return got, [p for k, p in events if k == "code.execution"]


@pytest.mark.parametrize(("program", "why"), [
    ("print('a')\0print('b')", "not run: the program holds a NUL character"),
    ("x = 1\n#" + "c" * MAX_CODE, "not run: the program is 131,078 bytes; at most 131,071 can be run at once"),
])
def test_a_program_that_cannot_be_passed_is_told_not_run_and_recorded(tmp_path: Path, program: str, why: str) -> None:
    """A NUL character (no argument may hold one: ``ValueError: embedded null byte``) or a program over one
    argument's 128 KiB (``OSError: Argument list too long``) raised out of the tool; each is now the tool's answer,
    exit code 126, recorded with the program."""
    got, [run] = _run(tmp_path, program)
    assert got.startswith(why) and got.endswith("[exit code: 126]"), got
    assert run["exit_code"] == 126 and run["output"].startswith(why) and run["code"] == program


def test_a_program_of_exactly_one_argument_runs(tmp_path: Path) -> None:
    """The largest program one argument holds (128 KiB less its NUL) still runs."""
    program = "print('fits')\n#" + "c" * (MAX_CODE - len("print('fits')\n#"))
    got, [run] = _run(tmp_path, program)
    assert got == "fits\n" and run["exit_code"] == 0


def test_a_background_child_holding_the_output_does_not_hold_the_tool(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A program that exits 0 after starting a process that keeps its output open: the tool answers once the output
    has been read on for OPEN_AFTER_S (0.5 s here), with exit code 0 and a line saying so; before, it waited for the
    whole timeout (300 s), and then reported exit code -9 for a program that had ended well."""
    monkeypatch.setattr(code_module, "OPEN_AFTER_S", 0.5)
    got, [run] = _run(tmp_path, "import subprocess\nchild = subprocess.Popen(['sleep', '60'])\n"
                                "print('started', child.pid, flush=True)")
    os.kill(int(got.split()[1]), signal.SIGKILL)  # the test's own leftover
    assert got.startswith("started ") and "its output was still open after it ended" in got
    assert "[exit code" not in got and run["exit_code"] == 0


def test_a_program_past_its_timeout_is_killed_and_says_so(tmp_path: Path) -> None:
    """A program still running at the tool's timeout is killed: exit code -9, its output so far, and a line saying
    it timed out."""
    got, [run] = _run(tmp_path, "import time\nprint('begun', flush=True)\ntime.sleep(60)", timeout=0.5)
    assert got.startswith("begun\n") and "(timed out after 0.5s)" in got and got.endswith("[exit code: -9]")
    assert run["exit_code"] == -9
