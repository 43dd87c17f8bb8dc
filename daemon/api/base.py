"""The request-handler contract, the registry of request types, and structured errors."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from labd.daemon.server import Daemon

__all__ = ["ApiError", "Request", "registry", "register"]


class ApiError(Exception):
    """An error for the client: a stable ``code``, a human ``message``, optional ``details``."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or {}


class Request:
    """One control request type. Subclasses set ``type`` and implement :meth:`execute`.

    ``execute`` returns the reply result, or :data:`DEFERRED` when the reply is sent later (after
    the store has committed what the request caused).
    """

    type: ClassVar[str]

    def __init__(self, daemon: Daemon, body: dict[str, Any], reply_to: tuple[bytes, str]) -> None:
        self.daemon = daemon
        self.body = body
        self.reply_to = reply_to

    def arg(self, name: str, types: builtins.type | tuple[builtins.type, ...], default: Any = ..., *,
            check: Callable[[Any], bool] | None = None, hint: str = "") -> Any:
        """The body's field ``name``, checked; else ``bad_request`` with ``details.field`` = ``name`` (a GUI marks
        the field)."""
        value = self.body.get(name, default)
        if value is ...:
            raise ApiError("bad_request", f"missing field {name!r}", {"field": name})
        if value is default and default is not ...:
            return value
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise ApiError("bad_request", f"field {name!r} must be {hint or _json_types(types)}", {"field": name})
        # what the store (SQL INTEGER) can hold, checked before the field's own check, whose hint ("a seq >= 0") a
        # huge number meets; a JSON integer past 64 bits reaches us as a float (orjson), refused so in an int field
        integral = isinstance(value, int) and isinstance(value, types) or isinstance(value, float) and types is int
        if integral and not -INT64 <= value < INT64:
            raise ApiError("bad_request", f"field {name!r} is out of range (a 64-bit integer)", {"field": name})
        if not isinstance(value, types) or (check is not None and not _passes(check, value)):
            raise ApiError("bad_request", f"field {name!r} must be {hint or _json_types(types)}", {"field": name})
        return value

    def only(self, *fields: str, done: str = "nothing was deleted") -> None:
        """Refuse (``bad_request``, naming them) fields of the body other than ``fields``: for requests that act
        (start, stop, answer, save, delete: an ignored field was the action done without it, a ``dry_run`` not
        applied) and, through :meth:`filters`, those that filter (docs/protocol.md lists them; the protocol's rule
        elsewhere: ignored). ``done``: what the message says of it."""
        unknown = sorted(set(self.body) - set(fields))
        if unknown:
            raise ApiError("bad_request", f"{self.type} has no field {', '.join(map(repr, unknown))} (its fields: "
                           f"{', '.join(fields)}): {done}", {"field": unknown[0]})

    def filters(self, *fields: str) -> None:
        """:meth:`only` for a request that reads: a misspelt filter answered as if none had been asked for."""
        self.only(*fields, done="a filter is honoured or refused, never ignored")

    def execute(self) -> Any:
        raise NotImplementedError


_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true/false"}


def _json_types(types: builtins.type | tuple[builtins.type, ...]) -> str:
    """``types`` as the JSON types a client sends: ``(int, float)`` is "a number", ``dict`` "an object"."""
    kinds = tuple(types) if isinstance(types, tuple) else (types,)
    if int in kinds and float in kinds:
        kinds = tuple(t for t in kinds if t is not int)
    return " or ".join(_JSON_NAMES.get(t, t.__name__) for t in kinds)


def _passes(check: Callable[[Any], bool], value: Any) -> bool:
    """``check(value)``, false where the check cannot even look at the value: a list's item that is a list or an object
    is unhashable, so ``item in {...}`` raises TypeError (``session.prune`` with ``status: [[]]`` answered
    ``internal``): it is the client's bad input, answered ``bad_request`` like any other."""
    try:
        return bool(check(value))
    except TypeError:
        return False


#: integers a request may carry: the store's INTEGER columns are 64-bit signed
INT64 = 2**63

DEFERRED = object()
registry: dict[str, type[Request]] = {}


def register(cls: type[Request]) -> type[Request]:
    registry[cls.type] = cls
    return cls
