"""The session's output cap (``limits.output``) on the runner: one account of what the workflow writes into the record.

Three things a workflow writes end up in the record as much as it likes: its stdout and stderr (``output`` events,
runner/capture.py), its log records (``log`` events: stdlib logging and ``ctx.log``, runner/logsetup.py) and its
custom events (``ctx.emit``, runner/context.py). They share one cap, counted in UTF-8 bytes — of the text for output,
of the JSON payload (as the channel encodes it) for a log or custom event — so the cap bounds what the workflow can
put into the database, whichever way it writes. The first ``cap`` bytes are kept; from the first thing that does not
fit on, nothing more is: output is cut at the cap, a log or custom event that does not fit is dropped whole.

Labd's own events never pass here (lifecycle, steps, approvals, agent activity, files, costs, the runner's own
warnings, which it emits directly): they are never dropped. The first drop is reported once (``{"cap"}``), the total
at the runner's end (``{"cap", "dropped", "kinds": {kind: bytes}}``), both as ``output.truncated``. The daemon
counts the same kinds again and drops what a runner that ignores its cap sends beyond it (daemon/outputcap.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import orjson

from labd.ipc.wire import PayloadError, encode_json, json_fallback

__all__ = ["OutputCap", "Report"]

Report = Callable[[dict[str, Any]], None]  # an output.truncated payload (without "by")
_dumps = orjson.dumps
_OPTS = orjson.OPT_NON_STR_KEYS


class OutputCap:
    """One session's account (thread-safe: the output reader and every thread that logs or emits share it)."""

    def __init__(self, cap: int | None, on_truncated: Report | None = None) -> None:
        self.cap = cap
        self._on_truncated = on_truncated
        self._lock = threading.Lock()
        self.kept = 0  # bytes kept
        self.dropped = 0  # bytes dropped past the cap
        self.kinds: dict[str, int] = {}  # ... per event kind

    def take(self, kind: str, size: int, whole: bool = True) -> tuple[int, bool]:
        """Account ``size`` bytes of ``kind``: how many of them to keep (all, none, or with ``whole`` False the head
        that fits), and whether this is the session's first drop (then call :meth:`report_start`)."""
        cap = self.cap
        if cap is None:
            return size, False
        with self._lock:
            room = cap - self.kept
            if size <= room:
                self.kept += size
                return size, False
            keep = 0 if whole else room
            first = not self.dropped
            self.dropped += size - keep
            self.kinds[kind] = self.kinds.get(kind, 0) + size - keep
            self.kept = cap  # nothing more fits
        return keep, first

    def report_start(self) -> None:
        """Say that dropping has started (once, at the first drop: a live follower sees it at once)."""
        if self._on_truncated is not None:
            self._on_truncated({"cap": self.cap or 0})

    def admit(self, kind: str, payload: dict[str, Any]) -> bool:
        """Whether a ``log`` or ``custom`` event with ``payload`` is recorded. A payload that cannot be encoded at
        all is let through (emitting it raises, as without a cap)."""
        cap = self.cap
        if cap is None:
            return True
        try:  # as the channel encodes it (labd.ipc.wire.encode_json, whose fallbacks are needed only at times)
            size = len(_dumps(payload, default=json_fallback, option=_OPTS))
        except orjson.JSONEncodeError:
            try:
                size = len(encode_json(payload))
            except PayloadError:
                return True
        with self._lock:  # the common case, inline: room left
            if self.kept + size <= cap:
                self.kept += size
                return True
        keep, first = self.take(kind, size)
        if first:
            self.report_start()
        return keep == size

    def final(self) -> None:
        """Report the total dropped, if anything was (at the runner's end)."""
        if self.dropped and self._on_truncated is not None:
            self._on_truncated({"cap": self.cap or 0, "dropped": self.dropped, "kinds": dict(self.kinds)})

    def after_fork(self) -> None:
        """In a child forked by the workflow: a lock of its own (a parent thread may have held this one). The child
        goes on from the parent's account at the fork; the daemon bounds what all of them send together."""
        self._lock = threading.Lock()
