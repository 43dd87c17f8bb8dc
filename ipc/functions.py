"""A Python function call as a session: the payload's format and bounds, and reading the outcome back.

``Client.submit(fn, *args, **kwargs)`` pickles ``(fn, args, kwargs)`` with dill, the pickler multiprocess is
built on (closures, lambdas, functions and classes defined in ``__main__`` or a notebook travel by value;
functions of importable modules by reference). The pickle travels base64-encoded in the ``payload`` field of a
signed ``session.start`` request for :data:`FUNCTION_WORKFLOW`; the daemon checks its size and records it with
its sha256 but never unpickles it. The runner (``labd.runner.workflows.function``) unpickles and calls it, and
returns ``{"labd.pickle": <base64 dill pickle of the value>, "type", "repr", "size"}`` as the session's result,
or records a ``custom`` event named :data:`ERROR_EVENT` before the session fails. Both stay in the record, so
:func:`outcome` can read them from any client process, at any later time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from labd.ipc.errors import describe_exception

__all__ = ["FUNCTION_WORKFLOW", "MAX_PAYLOAD", "MAX_PAYLOAD_TEXT", "MAX_RESULT", "ERROR_EVENT", "RESULT_KEY",
           "FunctionCall", "RemoteError", "encode_call", "dumps", "loads", "find_unpicklable", "check_params",
           "decode_result", "remote_error", "result_missing"]

#: the workflow that runs a submitted function (an import path: it is not in the CLI's list of built-ins)
FUNCTION_WORKFLOW = "labd.runner.workflows.function:call"
#: the largest pickled call a session start may carry; large data belongs in files
MAX_PAYLOAD = 1024 * 1024
#: the same bound on the base64 text the daemon accepts
MAX_PAYLOAD_TEXT = 4 * ((MAX_PAYLOAD + 2) // 3)
#: the largest pickled return value the runner sends back (it must fit one event, under ``max_message``)
MAX_RESULT = 8 * 1024 * 1024
#: the ``custom`` event name under which the runner records the function's exception
ERROR_EVENT = "labd.function.error"
#: the key that marks a session result as a pickled Python value
RESULT_KEY = "labd.pickle"

_PARAMS = {"function": str, "path": list, "cwd": str}


class RemoteError(Exception):
    """A submitted function (or its session) failed: the remote exception's type name, message and traceback.

    ``type_name`` is the remote exception's (``ValueError``; ``module.qualname`` for others), or, when the session
    ended without one: ``Cancelled`` (stopped), ``SessionEnded`` (killed by a limit or a signal, lost) or
    ``ResultMissing`` (completed, but its result is not in the record), ``ResultNotLoadable`` (completed, but its
    result does not unpickle in this process: :func:`decode_result`).

    ``exception`` is the remote exception object itself when it could be unpickled here (else ``None``);
    ``status`` is the session's final status (``failed``, ``cancelled``, ``lost``).
    """

    def __init__(self, type_name: str, message: str, traceback: str = "", *, session: str = "",
                 status: str = "failed", exception: BaseException | None = None) -> None:
        super().__init__(type_name, message)
        self.type_name, self.message, self.traceback = type_name, message, traceback
        self.session, self.status, self.exception = session, status, exception

    def __str__(self) -> str:
        head = f"{self.type_name}: {self.message}" if self.message else self.type_name
        if self.traceback:
            return f"{head}\n\n--- remote traceback (session {self.session}) ---\n{self.traceback.rstrip()}"
        return head


@dataclass(frozen=True)
class FunctionCall:
    """A pickled call ready to start: ``payload`` (base64 text) and the descriptive ``params`` sent with it."""

    payload: str
    params: dict[str, Any]
    size: int


_pickler: Any = None


def _pickler_class() -> Any:
    """dill's Pickler, except that every module but ``__main__`` is pickled by reference.

    dill pickles a module that lives outside ``sys.prefix`` (the user's own project, an editable install) by
    value: its whole ``__dict__``, which fails on anything unpicklable in it and would overwrite the module's
    state in the runner. A module a function uses must be imported there instead (through the sent sys.path).
    """
    global _pickler
    if _pickler is None:
        import importlib
        import types

        import dill  # imported on use: the daemon and plain clients never need it

        def save_module(pickler: Any, obj: types.ModuleType) -> None:
            if obj.__name__ == "__main__":
                dill.Pickler.dispatch[types.ModuleType](pickler, obj)
            else:
                pickler.save_reduce(importlib.import_module, (obj.__name__,), obj=obj)

        class Pickler(dill.Pickler):  # type: ignore[misc]
            dispatch = type(dill.Pickler.dispatch)(dill.Pickler.dispatch)  # keeps its metaclass fallback

        Pickler.dispatch[types.ModuleType] = save_module
        _pickler = Pickler
    return _pickler


def dumps(obj: Any) -> bytes:
    """Pickle with dill; ``recurse`` pickles a ``__main__`` function with the globals it uses, not all of them."""
    import io

    buf = io.BytesIO()
    _pickler_class()(buf, recurse=True).dump(obj)
    return buf.getvalue()


def loads(data: bytes) -> Any:
    import dill

    return dill.loads(data)


def _children(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    """The parts of ``obj`` a pickler descends into, each with its path (bounded: this runs on errors only)."""
    if isinstance(obj, list | tuple | set | frozenset):
        for i, item in enumerate(list(obj)[:200]):
            yield f"{path}[{i}]", item
    elif isinstance(obj, Mapping):
        for i, (key, value) in enumerate(obj.items()):
            if i >= 200:
                break
            yield f"{path}[{key!r}]", value
    elif inspect.isfunction(obj):
        try:
            found = inspect.getclosurevars(obj)
        except (TypeError, ValueError):
            return
        for name, value in found.nonlocals.items():
            yield f"{path} (closure variable {name!r})", value
        for name, value in found.globals.items():
            if not inspect.ismodule(value):
                yield f"{path} (global {name!r})", value
    elif hasattr(obj, "__dict__") and not isinstance(obj, type) and isinstance(vars(obj), dict):
        for i, (key, value) in enumerate(vars(obj).items()):
            if i >= 200:
                break
            yield f"{path}.{key}", value


def find_unpicklable(obj: Any, path: str, depth: int = 0) -> tuple[str, Any, Exception] | None:
    """The innermost part of ``obj`` that cannot be pickled: ``(path, object, error)``, or None if it pickles."""
    try:
        dumps(obj)
        return None
    except Exception as exc:  # noqa: BLE001 - pickling may fail with any exception type
        if depth < 6:
            for child_path, child in _children(obj, path):
                found = find_unpicklable(child, child_path, depth + 1)
                if found is not None:
                    return found
        return path, obj, exc


def describe_unpicklable(obj: Any, path: str, *, verb: str = "cannot be sent to a session",
                         error: BaseException | None = None) -> tuple[str, str, str]:
    """``(message, path, type name)`` for something that does not pickle, naming the innermost culprit (its parts are
    pickled one by one to find it). ``error``: what pickling ``obj`` raised, when the caller already tried (``obj``
    whole is then not pickled again: it may be large)."""
    if error is None:
        try:
            dumps(obj)
        except Exception as failed:  # noqa: BLE001 - any failure: described below
            error = failed
    if isinstance(error, RecursionError):  # its depth, not any one part (it blamed "argument 1[0][0][0][0][0][0]")
        return (f"{path}: a {type(obj).__name__} object nested too deeply {verb} (past Python's recursion limit)",
                path, type(obj).__name__)
    found = find_unpicklable(obj, path)
    where, culprit, exc = found if found is not None else (path, obj, error or Exception("unknown error"))
    type_name = type(culprit).__name__
    return f"{where}: a {type_name} object {verb} ({describe_exception(exc)})", where, type_name


def _cwd() -> str:
    """This process' working directory; "" when it was removed (submitting from a deleted directory works)."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        return ""


def _client_path() -> list[str]:
    """This process' import path (``''`` as the cwd), for the runner to find modules pickled by reference."""
    cwd = _cwd()
    out: list[str] = []
    for entry in sys.path:
        if not cwd and not os.path.isabs(entry):  # relative to a directory that is gone: nothing to find there
            continue
        full = os.path.join(cwd, entry) if entry else cwd
        full = os.path.normpath(full)
        if full not in out and os.path.exists(full):
            out.append(full)
    return out


def encode_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> FunctionCall:
    """Pickle ``fn(*args, **kwargs)``; raise :class:`~labd.ipc.client.LabdError` ``not_serializable`` naming the
    argument that does not pickle, or ``payload_too_large`` beyond :data:`MAX_PAYLOAD`."""
    from labd.ipc.client import LabdError

    if not callable(fn):
        raise LabdError("not_callable", f"submit needs a callable, not a {type(fn).__name__} object")
    try:
        data = dumps((fn, tuple(args), dict(kwargs)))
    except Exception:  # noqa: BLE001 - find which part fails and say so
        parts: list[tuple[str, Any]] = [("the function", fn)]
        parts += [(f"argument {i}", a) for i, a in enumerate(args, 1)]
        parts += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
        for path, part in parts:
            try:
                dumps(part)
            except Exception as exc:  # noqa: BLE001 - this part: say which of its parts fails
                message, where, type_name = describe_unpicklable(part, path, error=exc)
                raise LabdError("not_serializable", message, {"path": where, "type": type_name}) from None
        raise
    if len(data) > MAX_PAYLOAD:
        raise LabdError("payload_too_large",
                        f"the function and its arguments pickle to {len(data):,} bytes, more than the "
                        f"{MAX_PAYLOAD:,} a session start may carry: pass large data as files (write it to a "
                        "file and pass the path, or read it inside the function)",
                        {"size": len(data), "max": MAX_PAYLOAD})
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None) or ""
    params = {"function": f"{module}.{name}" if module else name, "path": _client_path(), "cwd": _cwd()}
    return FunctionCall(base64.b64encode(data).decode("ascii"), params, len(data))


def check_params(params: Mapping[str, Any], payload: str) -> dict[str, Any]:
    """Validate a submitted call's params and payload (daemon side, without unpickling); return the params to
    record, with ``sha256`` and ``size`` of the decoded payload. Raises ``ValueError`` with a message."""
    unknown = set(params) - set(_PARAMS)
    if unknown:
        raise ValueError(f"unknown params {sorted(unknown)} for a function call (accepted: {', '.join(_PARAMS)})")
    for key, type_ in _PARAMS.items():
        if key in params and not isinstance(params[key], type_):
            raise ValueError(f"param {key!r} must be a {type_.__name__}")
    path = params.get("path") or []
    if len(path) > 1000 or not all(isinstance(p, str) and 0 < len(p) <= 4096 for p in path):
        raise ValueError("param 'path' must be a list of at most 1000 directory names")
    if len(str(params.get("function", ""))) > 300 or len(str(params.get("cwd", ""))) > 4096:
        raise ValueError("param 'function' or 'cwd' is too long")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("field 'payload' must be base64 text") from None
    return {**params, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}


def decode_result(result: Any, session: str = "", *, pickled: bool = True) -> Any:
    """A session's result as a Python value: unpickled when the runner pickled it, else the JSON value itself.
    ``pickled``: the session is a submitted function's (:data:`FUNCTION_WORKFLOW`), whose runner pickles its result;
    any other workflow's result is its own JSON, a dict shaped like a pickled one included, and is never unpickled
    (a workflow returning ``{"labd.pickle": ...}`` had its code run in the process that read its result: review).

    A value that does not unpickle here (most often: its class is in a module the session's runner could import
    but this process cannot) raises :class:`RemoteError` ``ResultNotLoadable`` naming ``session``, the value's
    type and why, with the unpickling error as its ``__cause__``: the call did succeed, its value is in the record
    (``labd result`` shows its repr), and it loads in a process that can import what it needs."""
    if pickled and isinstance(result, dict) and isinstance(result.get(RESULT_KEY), str):
        try:
            return loads(base64.b64decode(result[RESULT_KEY]))
        except Exception as exc:  # noqa: BLE001 - unpickling runs arbitrary code: any exception type
            where = f"session {session}" if session else "the session"
            kind, shown = str(result.get("type") or "?"), str(result.get("repr") or "")[:200]
            raise RemoteError(
                "ResultNotLoadable",
                f"{where} completed, but its result (a {kind}{': ' + shown if shown else ''}) could not be unpickled "
                f"in this process: {describe_exception(exc)} (is every module the value needs importable here, as "
                "it was in the session's runner?)", session=session, status="completed") from exc
    return result


def result_missing(finished: dict[str, Any] | None) -> bool:
    """A completed session's ``session.finished`` payload records no result, and says why (the runner records a
    result too large for one event, or nested too deeply, that way: ``"error": "result not recorded: ..."``). A
    result of ``None`` is recorded as ``"result": null``."""
    return finished is not None and "result" not in finished and bool(finished.get("error"))


def remote_error(session: dict[str, Any], finished: dict[str, Any] | None, error: dict[str, Any] | None) -> RemoteError:
    """The error to raise for a session that did not complete, from the best evidence the record holds:
    the function's recorded exception, else the runner's ``session.finished`` error, else the session's end; for one
    that completed without its result in the record, ``ResultMissing`` with the runner's reason."""
    sid, status = session["id"], session["status"]
    if status == "completed":  # it completed, but its result is not in the record (see result_missing)
        why = (finished or {}).get("error")
        why = why.removeprefix("result not recorded: ") if isinstance(why, str) and why else (
            "no session.finished event (was it larger than the daemon's max_message?)")
        return RemoteError("ResultMissing", f"session {sid} completed but its result is not in the record: {why}",
                           session=sid, status=status)
    if error is not None:
        exc: BaseException | None = None
        if isinstance(error.get("pickle"), str):
            try:
                exc = loads(base64.b64decode(error["pickle"]))
            except Exception:  # noqa: BLE001 - e.g. an exception class we cannot import here: the text remains
                exc = None
        return RemoteError(str(error.get("type") or "Exception"), str(error.get("message") or ""),
                           str(error.get("traceback") or ""), session=sid, status=status,
                           exception=exc if isinstance(exc, BaseException) else None)
    reason = session.get("reason") or session.get("outcome_error") or status
    limit = session.get("stop_by") == "limit" or bool(session.get("kill_reason"))
    if finished is not None and finished.get("error") and status != "cancelled" and not limit:
        type_name, _, message = str(finished["error"]).partition(": ")
        if type_name.replace(".", "_").isidentifier():  # "ValueError: ..." (not "terminated (SIGTERM)")
            return RemoteError(type_name, message, str(finished.get("traceback") or ""), session=sid, status=status)
        reason = f"{reason} ({finished['error']})" if reason != finished["error"] else reason
    # ended by one of its limits: the reason names it (the runner only saw a SIGTERM, or its wall time)
    return RemoteError("Cancelled" if status == "cancelled" and not limit else "SessionEnded",
                       f"session {sid} ended {status}: {reason}", session=sid, status=status)
