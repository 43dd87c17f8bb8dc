"""The built-in workflows' names, part of the public interface (``labd run NAME``, ``session.start``): clients
(shell completion, GUIs) may offer them without asking the daemon; the runner maps each to its function."""

from __future__ import annotations

__all__ = ["BUILTINS"]

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
