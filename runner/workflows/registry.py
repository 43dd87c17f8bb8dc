"""Finding a workflow by name and binding its parameters.

A workflow is a function ``fn(ctx, **params)``. Its parameters are its keyword arguments; their
annotations (``int``, ``float``, ``bool``, ``str``) convert string values from the command line, and
parameters without a default are required. Built-ins have short names (``demo.count``); anything else
is an import path ``package.module:function`` or a file ``path/to/flows.py`` (``:function`` optional when
the file defines one). Names are resolved where the *client* stands: the daemon passes the client's
working directory and PYTHONPATH, which the runner (and the inspecting child) put first on ``sys.path``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from labd.ipc.errors import describe_exception
from labd.ipc.workflows import BUILTINS, file_of, is_file_ref  # public; this module resolves them
from labd.runner.workflows.params import check_params, describe, record_default

__all__ = ["BUILTINS", "Target", "WorkflowError", "bind_params", "canonical", "describe", "is_builtin", "parse_target",
           "record_default", "resolve"]


class WorkflowError(Exception):
    """The workflow cannot be found or its parameters do not fit; ``code`` is a stable error code."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


def is_builtin(name: str) -> bool:
    return name in BUILTINS


@dataclass(frozen=True)
class Target:
    """What a workflow name points at, found without importing anything.

    ``module`` is an import path (``mypkg.flows``) or ``file`` a path to a ``.py`` file; ``attr`` is the
    function's name, or None for a file whose single public function is the workflow.
    """

    module: str | None
    file: str | None
    attr: str | None

    def label(self) -> str:
        return f"{self.module or self.file}:{self.attr}" if self.attr else str(self.file)


def parse_target(name: str, cwd: str | None = None) -> Target:
    """Split a built-in name, ``package.module:function``, ``path/to/flows.py[:function]`` into a :class:`Target`.

    Relative file paths are made absolute against ``cwd`` (the client's working directory). Raises
    :class:`WorkflowError` ``unknown_workflow`` for names that cannot be any of these.
    """
    path = BUILTINS.get(name, name)
    ref, sep, attr = path.rpartition(":") if ":" in path else (path, "", "")
    if sep and not attr.isidentifier():
        raise WorkflowError("unknown_workflow", f"bad workflow {name!r}: {attr!r} after ':' is not a function name")
    if is_file_ref(ref):
        file = file_of(ref, cwd)
        if file is None:
            raise WorkflowError("unknown_workflow", f"workflow file {ref!r} is relative, and no working "
                                "directory came with the request to resolve it against")
        return Target(None, file, attr or None)
    if not sep:
        import difflib

        close = difflib.get_close_matches(name, sorted(BUILTINS), n=1, cutoff=0.75)
        hint = f"did you mean {close[0]!r}? " if close else ""  # `demo.cont` (power-user review)
        raise WorkflowError("unknown_workflow", f"unknown workflow {name!r}: {hint}not a built-in "
                            f"({', '.join(sorted(BUILTINS))}), not package.module:function, "
                            "and not a file (path/to/flows.py or ./flows.py:function)")
    if not all(part.isidentifier() for part in ref.split(".")):
        raise WorkflowError("unknown_workflow", f"bad workflow {name!r}: {ref!r} is not a module import path")
    return Target(ref, None, attr)


def canonical(name: str, cwd: str | None = None) -> str:
    """The name to record and hand to the runner: built-ins as given, files with an absolute path."""
    if is_builtin(name):
        return name
    t = parse_target(name, cwd)
    return t.label() if t.file else name


def _searched(search: list[str] | None) -> str:
    if not search:
        return ""
    return f"; searched {', '.join(search)} (the client's directory and PYTHONPATH), then labd's own path"


def _load_file(file: str) -> ModuleType:
    if not os.path.isfile(file):
        raise WorkflowError("unknown_workflow", f"no workflow file {file}")
    name = os.path.splitext(os.path.basename(file))[0]
    # As `python path/to/flows.py` does: the file's folder first, so its sibling modules import.
    folder = os.path.dirname(file)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise WorkflowError("unknown_workflow", f"cannot load {file} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pickling (multiprocessing) and dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # noqa: BLE001 - user code failing at import (a
        # script's sys.exit too) is reported, not raised: raised, it ended the checking process unexplained
        sys.modules.pop(name, None)
        raise WorkflowError("workflow_import_failed", f"running {file} raised {describe_exception(exc)}") from None
    return module


def _functions(module: ModuleType) -> list[tuple[str, Callable[..., Any]]]:
    """The public functions ``module`` defines that take arguments, by the names the module gives them (a lambda's
    own name is ``<lambda>``, which no target can name): its candidate workflows."""
    return [(n, f) for n, f in vars(module).items() if inspect.isfunction(f) and not n.startswith("_")
            and f.__module__ == module.__name__ and inspect.signature(f).parameters]


def _single_function(module: ModuleType, file: str) -> Callable[..., Any]:
    """The workflow of a file named without ``:function``: its one public function taking ``ctx`` first."""
    funcs = _functions(module)
    if len(funcs) != 1:  # helpers beside it: the one whose first parameter is ctx
        funcs = [(n, f) for n, f in funcs if next(iter(inspect.signature(f).parameters)) == "ctx"] or funcs
    if len(funcs) == 1:
        return funcs[0][1]
    if not funcs:
        raise WorkflowError("unknown_workflow", f"{file} defines no public function fn(ctx, ...) to run")
    names = sorted(n for n, _f in funcs)
    raise WorkflowError("unknown_workflow", f"{file} defines several workflows ({', '.join(names)}): "
                        f"name one, e.g. {file}:{names[0]}")


def resolve(name: str, cwd: str | None = None, search: list[str] | None = None) -> Callable[..., Any]:
    """Import and return the workflow function for a built-in name, ``module:function`` or a ``.py`` file.

    The caller has put the client's directories on ``sys.path``; ``search`` names them in error messages.
    """
    target = parse_target(name, cwd)
    if target.file is not None:
        module = _load_file(target.file)
        if target.attr is None:
            return _single_function(module, target.file)
        where = target.file
    else:
        assert target.module is not None
        where = repr(target.module)
        try:
            module = importlib.import_module(target.module)
        except ImportError as exc:
            raise WorkflowError("unknown_workflow", f"cannot import workflow module {target.module!r}: {exc}"
                                f"{_searched(search)}") from None
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # noqa: BLE001 - as in _load_file
            raise WorkflowError("workflow_import_failed",
                                f"importing {target.module!r} raised {describe_exception(exc)}") from None
    fn = getattr(module, target.attr or "", None)
    if not callable(fn):
        names = sorted(n for n, _f in _functions(module))
        near = difflib.get_close_matches(target.attr or "", names, n=1)
        hints = ([f"did you mean {near[0]!r}?"] if near else []) + ([f"its workflows: {', '.join(names[:20])}"]
                                                                     if names else [])
        raise WorkflowError("unknown_workflow", f"{where} has no function {target.attr!r}"
                            + (f" ({' '.join(hints)})" if hints else ""))
    _takes_ctx(fn, f"{where}:{target.attr}")
    return fn  # type: ignore[no-any-return]


def _takes_ctx(fn: Callable[..., Any], named: str) -> None:
    """A workflow is called ``fn(ctx, **params)``: one that takes no positional argument was accepted, and every
    session of it failed at its start with a TypeError."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin): left to the call
        return
    if not any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params):
        raise WorkflowError("unknown_workflow", f"{named} takes no ctx: a workflow is a function fn(ctx, ...) "
                            "(its parameters after ctx are the session's -p params)")


def bind_params(fn: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
    """Check and convert ``params`` for ``fn`` (:mod:`labd.runner.workflows.params`); raise :class:`WorkflowError`
    ``bad_params`` on misfit."""
    bound, errors = check_params(fn, params)
    if errors:
        raise WorkflowError("bad_params", "; ".join(f"{k}: {v}" for k, v in errors.items()), {"params": errors})
    return bound
