"""A work-directory scan made while another step's code execution runs (a step's end, a tool call's scan) leaves
that execution's files to the execution's own exact scan: before, it took them first and recorded them with no
step, so a file a concurrent step's code wrote was attributed to no step (the race seen under load in
``test_agents::test_files_are_attributed_exactly_when_steps_run_concurrently``)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from labd.runner.agents.code import make_run_code
from labd.runner.context import current_node
from labd.runner.files import FileTracker
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)


def _tracker(root: Path) -> tuple[FileTracker, list[tuple[str, dict[str, Any], str | None]]]:
    events: list[tuple[str, dict[str, Any], str | None]] = []

    def emit(kind: str, payload: dict[str, Any], node: str | None = None, *args: Any, **kwargs: Any) -> int:
        events.append((kind, payload, node))
        return len(events)

    files = FileTracker(root, emit)
    files.concurrent = lambda node: ["step-B"] if node != "step-B" else ["step-A"]  # the two steps overlap
    return files, events


def test_a_scan_while_another_step_executes_code_leaves_its_file_to_that_execution(tmp_path: Path) -> None:
    """Step A's code writes ``step_1.json`` and keeps running; step B's end scans the work directory meanwhile (on
    another thread). That scan reports nothing, and the execution's scan after credits the file to step A's node,
    agent and ``run_code``, once."""
    work = tmp_path / "work"
    work.mkdir()
    files, events = _tracker(work)
    run_code = make_run_code(files._emit, work, files)
    release = tmp_path / "release"  # outside the work directory: the test's own signal is no file event

    async def step_a() -> str:
        current_node.set("step-A")
        code = ("import os, time\nopen('step_1.json', 'w').write('{}')\n"
                f"while not os.path.exists({str(release)!r}): time.sleep(0.01)\n")
        return await run_code(code)

    found: list[int] = []

    def step_b_ends() -> None:
        wait_until(lambda: (work / "step_1.json").exists(), timeout=30, what="step A's code wrote its file")
        found.append(files.scan("step-B"))  # step B's end, while step A's code still runs
        release.write_text("")

    ender = threading.Thread(target=step_b_ends)
    ender.start()
    out = asyncio.run(step_a())
    ender.join(30)
    assert found == [0], events
    created = [(p, node) for kind, p, node in events if kind == "file.created"]
    assert len(created) == 1, created
    payload, node = created[0]
    assert payload["path"] == "step_1.json" and node == "step-A", created
    assert payload.get("tool") == "run_code" and "ambiguous" not in payload, payload
    assert "[exit code" not in out, out


def test_what_a_skipped_scan_would_have_found_outside_executions_is_reported_by_the_next_scan(tmp_path: Path) -> None:
    """A file written outside any execution while one runs is not lost by the scan that left it alone: the next
    scan after the execution reports it (here the execution's exact scan, which is the rule stated in
    :mod:`labd.runner.agents.code`); and the session's last scan runs even beside an execution that never ended."""
    files, events = _tracker(tmp_path)
    with files.executing():
        (tmp_path / "notes.txt").write_text("by step B's own Python")
        assert files.scan("step-B") == 0
        (tmp_path / "left.txt").write_text("x")
        assert files.scan(None, final=True) == 2  # the last scan is never skipped
    assert sorted(p["path"] for kind, p, _ in events if kind == "file.created") == ["left.txt", "notes.txt"]
