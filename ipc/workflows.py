"""The built-in workflows' names, part of the public interface (``labd run NAME``, ``session.start``): clients
(shell completion, GUIs) may offer them without asking the daemon; the runner maps each to its function."""

from __future__ import annotations

import os

__all__ = ["BUILTINS", "is_file_ref", "file_of"]

#: name -> ``module:function`` in the runner
BUILTINS: dict[str, str] = {
    "demo.count": "labd.runner.workflows.demo:count",
    "demo.compute": "labd.runner.workflows.demo:compute",
    "demo.chatty": "labd.runner.workflows.demo:chatty",
    "demo.fail": "labd.runner.workflows.demo:fail",
    "demo.sleep": "labd.runner.workflows.demo:sleep",
    "demo.events": "labd.runner.workflows.demo:events",
    "one_shot": "labd.runner.workflows.one_shot:one_shot",
    "planning_and_control": "labd.runner.workflows.planning:planning_and_control",
    "hitl": "labd.runner.workflows.planning:hitl",
    "deep_research": "labd.runner.workflows.deep_research:deep_research",
}


def is_file_ref(ref: str) -> bool:
    """Does ``ref`` (a workflow name's part before ``:``) name a file (``flows.py``, ``path/to/x``, ``./x``, ``~/x``)
    rather than a module?"""
    return ref.endswith(".py") or "/" in ref or ref.startswith(".")


def file_of(ref: str, cwd: str | None) -> str | None:
    """The file a workflow file reference names, as the daemon runs it: ``~`` expanded, made absolute against
    ``cwd`` (the client's working directory), normalised (``..`` resolved). None when ``ref`` is relative and no
    ``cwd`` is given."""
    file = os.path.expanduser(ref)
    if not os.path.isabs(file):
        if not cwd:
            return None
        file = os.path.join(cwd, file)
    return os.path.normpath(file)

