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
import json
import math
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from labd.ipc.errors import describe_exception
from labd.ipc.workflows import BUILTINS  # the names are public; this module resolves them

__all__ = ["BUILTINS", "Target", "WorkflowError", "bind_params", "canonical", "describe", "is_builtin", "parse_target",
           "resolve"]



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


def _is_file_ref(ref: str) -> bool:
    return ref.endswith(".py") or "/" in ref or ref.startswith(".")


def parse_target(name: str, cwd: str | None = None) -> Target:
    """Split a built-in name, ``package.module:function``, ``path/to/flows.py[:function]`` into a :class:`Target`.

    Relative file paths are made absolute against ``cwd`` (the client's working directory). Raises
    :class:`WorkflowError` ``unknown_workflow`` for names that cannot be any of these.
    """
    path = BUILTINS.get(name, name)
    ref, sep, attr = path.rpartition(":") if ":" in path else (path, "", "")
    if sep and not attr.isidentifier():
        raise WorkflowError("unknown_workflow", f"bad workflow {name!r}: {attr!r} after ':' is not a function name")
    if _is_file_ref(ref):
        file = os.path.expanduser(ref)
        if not os.path.isabs(file):
            if not cwd:
                raise WorkflowError("unknown_workflow", f"workflow file {ref!r} is relative, and no working "
                                    "directory came with the request to resolve it against")
            file = os.path.join(cwd, file)
        return Target(None, os.path.normpath(file), attr or None)
    if not sep:
        raise WorkflowError("unknown_workflow", f"unknown workflow {name!r}: not a built-in "
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


def _functions(module: ModuleType) -> list[Callable[..., Any]]:
    """The public functions ``module`` defines that take arguments: its candidate workflows."""
    return [f for n, f in vars(module).items() if inspect.isfunction(f) and not n.startswith("_")
            and f.__module__ == module.__name__ and inspect.signature(f).parameters]


def _single_function(module: ModuleType, file: str) -> Callable[..., Any]:
    """The workflow of a file named without ``:function``: its one public function taking ``ctx`` first."""
    funcs = _functions(module)
    if len(funcs) != 1:  # helpers beside it: the one whose first parameter is ctx
        funcs = [f for f in funcs if next(iter(inspect.signature(f).parameters)) == "ctx"] or funcs
    if len(funcs) == 1:
        return funcs[0]  # type: ignore[no-any-return]
    if not funcs:
        raise WorkflowError("unknown_workflow", f"{file} defines no public function fn(ctx, ...) to run")
    names = sorted(f.__name__ for f in funcs)
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
        names = sorted(f.__name__ for f in _functions(module))
        near = difflib.get_close_matches(target.attr or "", names, n=1)
        hints = ([f"did you mean {near[0]!r}?"] if near else []) + ([f"its workflows: {', '.join(names[:20])}"]
                                                                     if names else [])
        raise WorkflowError("unknown_workflow", f"{where} has no function {target.attr!r}"
                            + (f" ({' '.join(hints)})" if hints else ""))
    return fn  # type: ignore[no-any-return]


#: the range of an ``int`` parameter: what the store (and JSON readers elsewhere) hold exactly
INT64 = (-(1 << 63), (1 << 63) - 1)


def _short(value: Any) -> str:
    """``repr(value)`` cut to a readable length for an error message (a parameter may be megabytes long)."""
    if isinstance(value, int) and value.bit_length() > 256:  # repr() of one over 4300 digits even raises
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


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


def _unoptional(ann: Any) -> tuple[Any, bool]:
    """``Optional[X]`` / ``X | None`` -> (X, True); anything else -> (it, False)."""
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(ann)) == 2:
            return args[0], True
    return ann, False


#: parameter types given as JSON text from ``-p`` (``-p xs=[1,2]``); tuple and the sets from a JSON list
_CONTAINERS: tuple[type, ...] = (list, dict, tuple, set, frozenset)


def _container(ann: Any) -> type | None:
    """The container type of ``list`` / ``list[...]``, ``dict``, ``tuple``, ``set``, ``frozenset`` (bare or
    subscripted), else None."""
    for kind in _CONTAINERS:
        if ann is kind or typing.get_origin(ann) is kind:
            return kind
    return None


def record_default(value: Any) -> Any:
    """``json.dumps`` ``default`` for bound params: a set is recorded as a list (what it is bound from again);
    anything else as its repr."""
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)  # the same set is recorded the same way
    return repr(value)


def _json_param(text: str, kind: type) -> tuple[Any, str | None]:
    """A ``list`` / ``dict`` parameter given as text (``-p xs=[1,2]``): its JSON, or why not. Only what the record
    holds as the value that ran: no NaN, infinity or integers past 64 bits."""
    def refuse(value: Any) -> Any:
        raise ValueError(f"{value} is not a number JSON holds")

    json_kind = dict if kind is dict else list  # tuple and sets come as a JSON list
    example = '{"a": 1}' if kind is dict else "[1, 2]"
    try:
        value = json.loads(text, parse_constant=refuse)
    except ValueError:
        return text, f"expected {kind.__name__} as JSON (e.g. {example}), got {_short(text)}"
    if not isinstance(value, json_kind):
        return text, f"expected {kind.__name__} as JSON (e.g. {example}), got {_short(text)}"
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item) or (
                isinstance(item, int) and not isinstance(item, bool) and not INT64[0] <= item <= INT64[1]):
            return text, f"expected {kind.__name__} of finite numbers and 64-bit integers, got {_short(text)}"
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return value, None


def _items(ann: Any, container: type, value: Any) -> tuple[Any, str | None]:
    """The items of ``list[int]``, ``dict[str, float]``, ``tuple[int, str]``, ``set[str]`` ... each checked and
    converted as its own type (a dict's values; its keys are JSON's strings): the container rebuilt, or why not,
    naming the item."""
    args = typing.get_args(ann)
    if not args:
        return value, None
    keys = list(value) if container is dict else list(range(len(value)))
    items = list(value.values()) if container is dict else list(value)
    if container is tuple and args[-1] is not Ellipsis:  # tuple[int, str]: a type per position
        if len(args) != len(items):
            return value, f"expected {len(args)} items, got {len(items)}"
        kinds = list(args)
    else:  # list[X], set[X], tuple[X, ...], dict[K, V]: one type for every item (a dict's values)
        kinds = [args[-1] if container is dict else args[0]] * len(items)
    out = []
    for key, kind, item in zip(keys, kinds, items, strict=True):
        item, problem = _convert(kind, item)
        if problem is not None:
            return value, f"item {key!r}: {problem}"
        out.append(item)
    return (dict(zip(keys, out, strict=True)) if container is dict else container(out)), None


def _members(ann: Any) -> tuple[Any, ...]:
    """The types of a union (``Union[...]`` / ``X | Y``), or () for anything else."""
    return typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else ()


def _convert(ann: Any, value: Any) -> tuple[Any, str | None]:
    """``value`` checked and converted for a parameter annotated ``ann``: (the value, None) or (it, why not)."""
    ann, optional = _unoptional(ann)
    if optional and value is None:
        return None, None
    members = _members(ann)
    if members:  # X | Y: the first member that takes the value
        if value is None and type(None) in members:
            return None, None
        kinds = [m for m in members if m is not type(None)]
        for m in kinds:  # a value already of a member's own type stays as it is (the SDK's 1.0 for float | int)
            if isinstance(m, type) and m is not str and type(value) is m:
                return value, None
        # text is tried as every other member first, as for a plain int parameter: -p x=5 is 5 for int | str
        for m in sorted(kinds, key=lambda m: m is str):
            converted, problem = _convert(m, value)
            if problem is None:
                return converted, None
        names = " | ".join(getattr(m, "__name__", None) or str(m) for m in kinds)
        return value, f"expected {names}, got {_short(value)}"
    if typing.get_origin(ann) is typing.Literal:  # one of the listed values; from -p, the one it spells
        choices = typing.get_args(ann)
        match = [c for c in choices if type(c) is type(value) and c == value]
        if not match and isinstance(value, str):
            match = [c for c in choices if (str(c).lower() == value.strip().lower() if isinstance(c, bool)
                                             else str(c) == value)]
        if not match:
            return value, f"expected one of {', '.join(map(repr, choices))}, got {_short(value)}"
        return match[0], None
    container = _container(ann)
    if container is not None:  # JSON text (from -p) or the value itself
        problem = None
        if isinstance(value, str):
            value, problem = _json_param(value, container)
        if problem is None and container in (tuple, set, frozenset) and isinstance(value, list | tuple | set
                                                                                   | frozenset):
            try:
                value = container(value)
            except TypeError:  # a set of lists or dicts
                problem = f"expected {container.__name__} of hashable values, got {_short(value)}"
        if problem is None and not isinstance(value, container):
            problem = f"expected {container.__name__}, got {type(value).__name__}"
        return (value, problem) if problem is not None else _items(ann, container, value)
    conv = _CONVERTERS.get(ann)
    if conv is not None and isinstance(value, str) and ann is not str:
        try:
            value = conv(value)
        except (ValueError, KeyError):
            return value, f"expected {ann.__name__}, got {_short(value)}"
    elif conv is not None and ann is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 1 << 1000 else math.inf  # past float's range: refused below
    elif isinstance(ann, type) and ann in _CONVERTERS and (
            not isinstance(value, ann) or (isinstance(value, bool) and ann is not bool)):
        return value, f"expected {ann.__name__}, got {type(value).__name__}"
    # what the record cannot hold as the value that ran is refused, not recorded as something else: JSON has
    # no NaN or infinity (they would read back as null), and the store's integers are 64-bit
    if ann is float and isinstance(value, float) and not math.isfinite(value):
        return value, f"expected a finite number, got {_short(value)}"
    if ann is int and isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        return value, f"{_short(value)} is out of range (a 64-bit integer: {INT64[0]} to {INT64[1]})"
    return value, None


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
        value, problem = _convert(p.annotation, value)
        if problem is not None:
            errors[name] = problem
            continue
        bound[name] = value
    for name, p in spec.items():
        if p.default is p.empty and name not in bound and name not in errors:
            errors[name] = "required parameter missing"
    if errors:
        raise WorkflowError("bad_params", "; ".join(f"{k}: {v}" for k, v in errors.items()), {"params": errors})
    return bound
