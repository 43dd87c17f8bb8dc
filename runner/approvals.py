"""Approvals inside a runner: ask, then wait (without polling) for the daemon to deliver the answer.

The request is an ``approval.requested`` event; the daemon stores it as a durable row, a client
resolves it (or the per-request timeout policy does), and the daemon sends the resolution to the
runner over its channel once it is committed. A runner that reconnects (e.g. after a daemon restart)
names the approvals it still waits for in its ``hello``, and the daemon re-sends their resolutions.

What a workflow may ask is bounded (labd.ipc.events ``APPROVAL_*``: prompt, context, kind, options): a request
beyond a bound, or too large for one message to the daemon, raises at once (``ValueError``) instead of being
recorded whole or waited for in vain (an approval is never dropped or truncated: the workflow waits for its answer).

A waiting thread sleeps in one untimed wait until its answer arrives or the session is cancelled: one watcher
thread per runner waits for the cancellation and wakes every waiter then (thousands of waiters cost nothing
while they wait; they used to wake four times a second each to look for a cancellation).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labd.ipc.events import APPROVALS_PENDING_MAX, validate
from labd.ipc.wire import encode_json

__all__ = ["Approvals", "Decision", "ApprovalTimeout", "DECISIONS"]

DECISIONS = ("approve", "reject", "modify", "redo")


class ApprovalTimeout(Exception):
    """Nobody answered in time and the request's policy is ``fail``."""


@dataclass(frozen=True)
class Decision:
    """A human's (or the timeout policy's) answer."""

    decision: str  # approve | reject | modify | redo
    feedback: str | None = None
    hypothesis: str | None = None
    by: str = "client"
    via: str = "client"  # client | timeout

    @property
    def approved(self) -> bool:
        return self.decision == "approve"


class Approvals:
    """Outstanding approval requests of this runner."""

    def __init__(self, emit: Callable[..., int], cancelled: threading.Event,
                 room: Callable[[], int] | None = None) -> None:
        self._emit = emit
        #: the most bytes one encoded event may take and still reach the daemon whole (the channel's
        #: ``event_room``; by default found on ``emit`` when it is the channel's own method); None: not checked
        self._room = room if room is not None else getattr(getattr(emit, "__self__", None), "event_room", None)
        self._cancelled = cancelled
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self._watcher: threading.Thread | None = None
        #: in a process the workflow forked: answers arrive on the runner's channel thread, which the child has not
        self.forked = False

    def _watch(self) -> None:
        """The watcher thread: sleeps until the session is cancelled, then wakes every waiter (each sees no answer
        and calls its ``on_cancel``); a waiter registered later sees the cancellation when it registers."""
        self._cancelled.wait()
        with self._lock:
            for done, _box in self._waiting.values():
                done.set()

    def _register(self, aid: str, done: threading.Event, box: list[dict[str, Any]]) -> None:
        with self._lock:
            if len(self._waiting) >= APPROVALS_PENDING_MAX:  # the daemon would reject it: said here, not waited for
                raise RuntimeError(f"{APPROVALS_PENDING_MAX} approvals of this session are pending already, the most "
                                   "a session may have at once: wait for answers before asking more")
            self._waiting[aid] = (done, box)
            if self._cancelled.is_set():
                done.set()
            elif self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch, name="labd-approvals-cancel", daemon=True)
                self._watcher.start()

    def waiting_ids(self) -> list[str]:
        with self._lock:
            return list(self._waiting)

    def on_resolved(self, body: dict[str, Any]) -> None:
        """Called on the channel thread when the daemon delivers a resolution."""
        with self._lock:  # the first answer only (a re-sent one is dropped); under the lock, as the waiter looks
            entry = self._waiting.get(str(body.get("approval_id")))
            if entry is not None and not entry[1]:
                entry[1].append(body)
                entry[0].set()

    def request(self, kind: str, prompt: str, *, options: tuple[str, ...] | list[str] = DECISIONS,
                context: Any = None, timeout: float | None = None, policy: str = "reject",
                node_id: str | None = None, agent: str | None = None,
                on_cancel: Callable[[], None] | None = None) -> Decision:
        """Ask and block until answered. ``policy`` (approve | reject | fail) applies after ``timeout`` s."""
        if policy not in ("approve", "reject", "fail"):
            raise ValueError(f"policy must be approve, reject or fail, not {policy!r}")
        options = list(options)
        aid = "ap-" + secrets.token_hex(8)
        payload: dict[str, Any] = {"approval_id": aid, "kind": kind, "prompt": prompt, "options": options,
                                   "context": context, "policy": policy}
        if timeout is not None:
            payload["timeout"] = float(timeout)
        if agent:
            payload["agent"] = agent
        # raise here, rather than wait for a request the daemon rejects (its bounds: labd.ipc.events APPROVAL_*)
        validate("approval.requested", payload, node_id)
        if self.forked:
            raise RuntimeError("an approval cannot be asked from a process the workflow forked (its answer could "
                               "not reach it): ask in the session's own process")
        from labd.runner import replay

        replayer = replay.active()
        if replayer is not None:  # a replay session: the recorded answer (a never-asked question raises)
            answer = replayer.serve_approval(kind, prompt, options, context, node=node_id)
            if answer is not None:
                if answer["decision"] == "fail":  # the recorded request timed out with policy fail
                    raise ApprovalTimeout(f"approval {kind!r} was not answered in the recorded session (policy: fail)")
                return Decision(decision=answer["decision"], feedback=answer.get("feedback"),
                                hypothesis=answer.get("hypothesis"), by="replay", via="replay")
        if self._room is not None:  # an event too large for one message would reach the daemon as a marker only
            from labd.runner.channel_wire import too_large

            size, room = len(encode_json([2**53, time.time(), "approval.requested", node_id, None, payload])), \
                self._room()
            if size > room:
                raise ValueError(f"approval {kind!r} cannot be asked: {too_large(size, room)}")
        done: threading.Event = threading.Event()
        box: list[dict[str, Any]] = []
        self._register(aid, done, box)  # before it is asked: the answer may come at once
        try:
            self._emit("approval.requested", payload, node_id)
            while True:
                done.wait()  # untimed: an answer, or the watcher on a cancellation, sets it
                if box:
                    break
                if on_cancel is not None:
                    on_cancel()  # raises (Cancelled) as a rule
                with self._lock:  # still here: wait on for the answer, which may have come meanwhile
                    if not box:
                        done.clear()
        finally:
            with self._lock:
                self._waiting.pop(aid, None)
        body = box[0]
        if body["decision"] == "fail":
            raise ApprovalTimeout(f"approval {kind!r} was not answered within {timeout:g}s (policy: fail)")
        return Decision(decision=body["decision"], feedback=body.get("feedback"), hypothesis=body.get("hypothesis"),
                        by=str(body.get("by") or "client"), via=str(body.get("via") or "client"))
