"""Finding a workflow by name and binding its parameters.

A workflow is a function ``fn(ctx, **params)``. Its parameters are its keyword arguments; their
annotations (``int``, ``float``, ``bool``, ``str``) convert string values from the command line, and
parameters without a default are required. Built-ins have short names (``demo.count``); anything else
is an import path ``package.module:function``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["BUILTINS", "WorkflowError", "resolve", "bind_params", "describe", "is_builtin"]

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


class WorkflowError(Exception):
    """The workflow cannot be found or its parameters do not fit; ``code`` is a stable error code."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


def is_builtin(name: str) -> bool:
    return name in BUILTINS


def resolve(name: str) -> Callable[..., Any]:
    """Import and return the workflow function for a built-in name or ``module:function`` path."""
    path = BUILTINS.get(name, name)
    if ":" not in path:
        raise WorkflowError("unknown_workflow", f"unknown workflow {name!r}: not a built-in "
                            f"({', '.join(sorted(BUILTINS))}) and not an import path 'package.module:function'")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkflowError("unknown_workflow", f"cannot import workflow module {module_name!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - user code failing at import is reported, not raised
        raise WorkflowError("workflow_import_failed",
                            f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise WorkflowError("unknown_workflow", f"module {module_name!r} has no callable {attr!r}")
    return fn  # type: ignore[no-any-return]


_CONVERTERS: dict[Any, Callable[[str], Any]] = {
    int: int,
    float: float,
    str: str,
    bool: lambda s: {"1": True, "true": True, "yes": True, "on": True,
                     "0": False, "false": False, "no": False, "off": False}[s.strip().lower()],
}


_BY_NAME = {"int": int, "float": float, "bool": bool, "str": str}


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    try:  # modules with `from __future__ import annotations` keep annotations as strings
        return inspect.signature(fn, eval_str=True)
    except (NameError, TypeError, SyntaxError):
        # Some annotation cannot be evaluated (e.g. a TYPE_CHECKING-only import): still resolve the
        # simple ones parameter by parameter, so conversion keeps working.
        sig = inspect.signature(fn)
        return sig.replace(parameters=[
            p.replace(annotation=_BY_NAME.get(p.annotation, p.annotation)) if isinstance(p.annotation, str) else p
            for p in sig.parameters.values()])


def _params_of(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    params = list(_signature(fn).parameters.values())[1:]  # the first one is ctx
    return [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def describe(fn: Callable[..., Any]) -> dict[str, Any]:
    """A JSON-friendly description: docstring and parameters with types and defaults."""
    out = []
    for p in _params_of(fn):
        ann = p.annotation
        type_name = "any" if ann is p.empty else (ann.__name__ if isinstance(ann, type) else str(ann))
        out.append({"name": p.name, "type": type_name, "required": p.default is p.empty,
                    "default": None if p.default is p.empty else p.default})
    return {"doc": inspect.getdoc(fn) or "", "params": out}


def bind_params(fn: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
    """Check and convert ``params`` for ``fn``; raise :class:`WorkflowError` ``bad_params`` on misfit."""
    spec = {p.name: p for p in _params_of(fn)}
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in _signature(fn).parameters.values())
    errors: dict[str, str] = {}
    bound: dict[str, Any] = {}
    for name, value in params.items():
        p = spec.get(name)
        if p is None:
            if accepts_any:
                bound[name] = value
            else:
                errors[name] = f"unknown parameter (accepted: {', '.join(spec) or 'none'})"
            continue
        conv = _CONVERTERS.get(p.annotation)
        if conv is not None and isinstance(value, str) and p.annotation is not str:
            try:
                value = conv(value)
            except (ValueError, KeyError):
                errors[name] = f"expected {p.annotation.__name__}, got {value!r}"
                continue
        elif conv is not None and p.annotation is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(p.annotation, type) and p.annotation in _CONVERTERS and (
                not isinstance(value, p.annotation) or (isinstance(value, bool) and p.annotation is not bool)):
            errors[name] = f"expected {p.annotation.__name__}, got {type(value).__name__}"
            continue
        bound[name] = value
    for name, p in spec.items():
        if p.default is p.empty and name not in bound and name not in errors:
            errors[name] = "required parameter missing"
    if errors:
        raise WorkflowError("bad_params", "; ".join(f"{k}: {v}" for k, v in errors.items()), {"params": errors})
    return bound
