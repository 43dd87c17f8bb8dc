"""A workflow's parameters: described from its signature, and checked and converted to its annotations.

The command line gives every value as text (``-p n=5``, ``-p xs=[1,2]`` as JSON); the SDK and the daemon's API give
JSON values. Either is converted to the parameter's annotation (``int``, ``float``, ``bool``, ``str``, ``Literal``,
unions, ``Optional``, and the containers ``list``/``dict``/``tuple``/``set``/``frozenset`` with their items), or
refused naming what misfits. :func:`labd.runner.workflows.registry.bind_params` raises on the problems found here.
"""

from __future__ import annotations

import inspect
import json
import math
import types
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["INT64", "PARAM_DEPTH", "check_params", "describe", "record_default"]


#: how deep a ``list`` / ``dict`` parameter may nest: as deep as one given as JSON in a request can (the daemon's
#: 200-level request limit, less the ``{"params": {name: ...}}`` around it); deeper ones are refused naming it
PARAM_DEPTH = 198

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
        type_name = "any" if ann is p.empty else _type_name(ann)
        out.append({"name": p.name, "type": type_name, "required": p.default is p.empty,
                    "default": None if p.default is p.empty else p.default})
    return {"doc": inspect.getdoc(fn) or "", "params": out}


def _type_name(ann: Any) -> str:
    """How a parameter's type reads in ``labd workflows``: ``int``, ``'approve' | 'reject'`` for a Literal (not
    ``typing.Literal['approve', 'reject']``), the annotation's own text otherwise."""
    if isinstance(ann, type):
        return ann.__name__
    if typing.get_origin(ann) is typing.Literal:
        return " | ".join(repr(v) for v in typing.get_args(ann))
    return str(ann).removeprefix("typing.")


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
    except RecursionError:  # json's parser recurses: ~1000 levels end it
        return text, f"expected {kind.__name__} nested at most {PARAM_DEPTH} levels, got {_short(text)}"
    except ValueError:
        return text, f"expected {kind.__name__} as JSON (e.g. {example}), got {_short(text)}"
    if not isinstance(value, json_kind):
        return text, f"expected {kind.__name__} as JSON (e.g. {example}), got {_short(text)}"
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > PARAM_DEPTH and isinstance(item, list | dict):
            return text, f"expected {kind.__name__} nested at most {PARAM_DEPTH} levels, got {_short(text)}"
        if isinstance(item, float) and not math.isfinite(item) or (
                isinstance(item, int) and not isinstance(item, bool) and not INT64[0] <= item <= INT64[1]):
            return text, f"expected {kind.__name__} of finite numbers and 64-bit integers, got {_short(text)}"
        if isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
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
    if optional and ann is not str and isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None, None  # -p k=none: the command line's None (a str parameter keeps the word)
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


def check_params(fn: Callable[..., Any], params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``params`` checked and converted for ``fn``: (the bound values, the problem of each parameter that misfits)."""
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
    return bound, errors
