"""The workflow behind ``Client.submit``: unpickle a function call, run it as one step, send its value back.

Runs in the session's runner like any workflow (output capture, events, limits, files; ``labd.context()``
reaches the context from inside the function). The payload arrives in the params the daemon passes to the
runner; it is checked against the sha256 the daemon recorded before it is unpickled. Modules pickled by
reference are found through the client's import path (sent with the call), appended after the runner's own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import os
import reprlib
import sys
import traceback
from typing import Any

from labd.ipc.errors import exception_text
from labd.ipc.functions import ERROR_EVENT, MAX_RESULT, RESULT_KEY, describe_unpicklable, dumps, loads
from labd.runner.context import Cancelled, Context
from labd.runner.credentials import note_refusal

__all__ = ["call", "FunctionLoadError", "ResultNotSerializable", "ResultTooLarge"]


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 200


class FunctionLoadError(RuntimeError):
    """The submitted call could not be unpickled in the session (most often: a module the runner cannot import)."""


class ResultNotSerializable(TypeError):
    """The function returned a value that cannot be pickled back to the client."""


class ResultTooLarge(ValueError):
    """The function returned a value whose pickle exceeds what one event may carry."""


def call(ctx: Context, payload: str = "", sha256: str = "", size: int = 0, function: str = "",
         path: list[str] | None = None, cwd: str = "", max_result: int = MAX_RESULT) -> dict[str, Any]:
    """Run a Python function sent by ``Client.submit`` (not for the command line: it needs the pickled call)."""
    me = os.getpid()
    try:
        fn, args, kwargs = _load(payload, sha256, path or [])
        with ctx.step(_step_name(function, fn)):
            value = fn(*args, **kwargs)
            if inspect.iscoroutine(value):  # an `async def` function: its value is what the coroutine returns
                value = asyncio.run(value)
        return _encode(value, max_result)
    except Cancelled:
        raise
    except BaseException as exc:  # noqa: BLE001 - recorded for Client.result, then the session fails with it
        if os.getpid() == me:  # a child the function forked: its exception is not the call's (forksafe ends it)
            note_refusal(exc, ctx.workdir)  # a write the confinement refused says why
            _record(ctx, exc, max_result // 2)
        raise


def _load(payload: str, sha256: str, path: list[str]) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    if not payload:
        raise FunctionLoadError("no function to run: this workflow runs calls sent with Client.submit")
    raw = base64.b64decode(payload)
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise FunctionLoadError("the payload does not match the sha256 recorded for it")
    for entry in path:  # after the runner's own entries: the client's modules never shadow labd's
        if isinstance(entry, str) and entry not in sys.path:
            sys.path.append(entry)
    try:
        fn, args, kwargs = loads(raw)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported the same way
        raise FunctionLoadError(f"the submitted call could not be loaded in the session: {type(exc).__name__}: "
                                f"{exc} (modules are imported through the client's sys.path; is the module "
                                "importable by the daemon's Python?)") from exc
    return fn, tuple(args), dict(kwargs)


def _step_name(function: str, fn: Any) -> str:
    name = function.rsplit(".", 1)[-1] if function else getattr(fn, "__qualname__", "call")
    return (name or "call")[:200]


def _encode(value: Any, limit: int) -> dict[str, Any]:
    try:
        data = dumps(value)
    except Exception as exc:  # noqa: BLE001 - say which part of the value does not pickle
        message, _, _ = describe_unpicklable(value, "the return value", verb="cannot be sent back from a session",
                                             error=exc)
        raise ResultNotSerializable(f"{message}; return plain data, or write it to a file in the session's "
                                    "work directory") from None
    if len(data) > limit:
        raise ResultTooLarge(f"the return value pickles to {len(data):,} bytes, more than the {limit:,} a "
                             "session may send back: write large results to files in the session's work "
                             "directory (labd.context().workdir) and read them from there")
    kind = type(value)
    try:
        shown = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the value
        shown = f"<{kind.__qualname__} object>"
    return {RESULT_KEY: base64.b64encode(data).decode("ascii"), "type": f"{kind.__module__}.{kind.__qualname__}",
            "repr": shown, "size": len(data)}


def _record(ctx: Context, exc: BaseException, limit: int) -> None:
    """Record the exception (type, message, traceback without our own frames, and its pickle if it has one)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    pickled: str | None = None
    try:
        data = dumps(exc)
        if len(data) <= min(limit, 1024 * 1024):
            pickled = base64.b64encode(data).decode("ascii")
    except Exception:  # noqa: BLE001 - the text is enough
        pickled = None
    kind = type(exc)
    module = "" if kind.__module__ in ("builtins", __name__) else f"{kind.__module__}."
    try:
        ctx.emit(ERROR_EVENT, {"type": f"{module}{kind.__qualname__}", "message": exception_text(exc),
                               "traceback": text, "pickle": pickled})
    except Exception:  # noqa: BLE001 - never hide the function's own error behind a recording failure
        pass
