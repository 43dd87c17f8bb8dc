"""The context object a workflow receives: params, workdir, logging, events, steps, cancellation.

Workflow code holds no tracking code of its own: output, logs and steps become events through this
object, and everything it emits is attributed to the session (and to the current step node).
"""

from __future__ import annotations

import contextvars
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = ["Context", "Cancelled", "Node"]

Emit = Callable[..., int]

#: the DAG node the calling code is inside (per thread / task, so concurrent steps attribute correctly)
current_node: contextvars.ContextVar[str | None] = contextvars.ContextVar("labd_node", default=None)


class Cancelled(BaseException):
    """Raised inside the workflow when the session is asked to stop (at a step boundary or by SIGTERM).

    A BaseException, like KeyboardInterrupt, so a workflow's ``except Exception`` does not swallow it.
    """


class Node:
    """A step (DAG node) that is open; ``id`` is unique in the session."""

    def __init__(self, node_id: str, name: str) -> None:
        self.id = node_id
        self.name = name


class Context:
    """What a workflow function gets as its first argument."""

    def __init__(self, session_id: str, workdir: Path, params: Mapping[str, Any], emit: Emit,
                 log: Any, secrets: Mapping[str, str]) -> None:
        self.session_id = session_id
        self.workdir = workdir
        self.params = MappingProxyType(dict(params))
        self.log = log
        self._emit = emit
        self._secrets = MappingProxyType(dict(secrets))
        self._node_ids = itertools.count(1)
        self._cancel = threading.Event()
        self.cancel_reason = ""
        #: the innermost open step of the main thread (for output, which is read on another thread)
        self.active_node: str | None = None
        #: called before each step boundary (the runner drains captured output there)
        self.before_boundary: Callable[[], None] = lambda: None

    # ---- events -----------------------------------------------------------------------------------
    def emit(self, name: str, data: Any = None) -> None:
        """Record a custom event ``name`` with JSON-serialisable ``data``, attributed to the current step."""
        self._emit("custom", {"name": name, "data": data}, current_node.get())

    @contextmanager
    def step(self, name: str) -> Iterator[Node]:
        """Open a DAG node for a step; checks for cancellation on entry and exit.

        Emits ``step.started`` and ``step.finished`` (status completed, failed or cancelled).
        """
        self.check_cancelled()
        node = Node(f"n{next(self._node_ids)}", name)
        self.before_boundary()
        self._emit("step.started", {"name": name, "parent_node": current_node.get()}, node.id)
        token = current_node.set(node.id)
        outer, main = self.active_node, threading.current_thread() is threading.main_thread()
        if main:
            self.active_node = node.id
        start = time.monotonic()
        status, error = "completed", None
        try:
            yield node
        except Cancelled:
            status, error = "cancelled", self.cancel_reason or "cancelled"
            raise
        except BaseException as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.before_boundary()
            current_node.reset(token)
            if main:
                self.active_node = outer
            payload = {"name": name, "status": status, "duration": time.monotonic() - start}
            if error:
                payload["error"] = error
            self._emit("step.finished", payload, node.id)
        self.check_cancelled()

    # ---- cancellation -----------------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` if a stop was requested."""
        if self._cancel.is_set():
            raise Cancelled(self.cancel_reason or "cancelled")

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up and raise :class:`Cancelled` as soon as a stop is requested."""
        if self._cancel.wait(seconds):
            raise Cancelled(self.cancel_reason or "cancelled")

    def request_cancel(self, reason: str) -> None:
        self.cancel_reason = reason
        self._cancel.set()

    # ---- secrets ----------------------------------------------------------------------------------
    def secret(self, name: str) -> str | None:
        """A secret (e.g. an API key) the daemon withheld from the environment of executed code."""
        return self._secrets.get(name)
