"""The session's output cap (``limits.output``) on the runner: one account of what the workflow writes into the record.

Three things a workflow writes end up in the record as much as it likes: its stdout and stderr (``output`` events,
runner/capture.py), its log records (``log`` events: stdlib logging and ``ctx.log``, runner/logsetup.py) and its
custom events (``ctx.emit``, runner/context.py). They share one cap, counted in UTF-8 bytes — of the text for output,
of the whole event as the channel encodes it for a log or custom event (its payload and ~40 bytes of envelope: the
channel charges the bytes it has just encoded, :meth:`OutputCap.charge`, rather than encode the payload a second time
to size it) — so the cap bounds what the workflow can
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
        self._report_due = False  # :meth:`charge` found the first drop; its caller reports it (report_if_due)

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

    def charge(self, kind: str, size: int) -> bool:
        """Whether a ``log`` or ``custom`` event of ``size`` encoded bytes is recorded (all of it, or none):
        :meth:`labd.runner.channel.Channel.emit` asks with the bytes it already encoded. On the session's first
        drop the caller says so (:meth:`report_if_due`) once it can emit again: it holds the channel's lock here."""
        cap = self.cap
        if cap is None:
            return True
        with self._lock:  # the common case, inline: room left
            if self.kept + size <= cap:
                self.kept += size
                return True
        keep, first = self.take(kind, size)
        if first:
            self._report_due = True
        return keep == size

    def report_if_due(self) -> None:
        """After :meth:`charge` dropped an event, with the channel's lock released: report the session's first
        drop if that was it (once, whichever thread asks first)."""
        with self._lock:
            due, self._report_due = self._report_due, False
        if due:
            self.report_start()

    def admit(self, kind: str, payload: dict[str, Any]) -> bool:
        """Whether a ``log`` or ``custom`` event with ``payload`` is recorded, sized by encoding it (a forked
        child's events, which its runner's channel does not encode: :meth:`charge` is for those it does). A
        payload that cannot be encoded at all is let through (emitting it raises, as without a cap)."""
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
        if self.charge(kind, size):
            return True
        self.report_if_due()
        return False

    def final(self) -> None:
        """Report the total dropped, if anything was (at the runner's end)."""
        if self.dropped and self._on_truncated is not None:
            self._on_truncated({"cap": self.cap or 0, "dropped": self.dropped, "kinds": dict(self.kinds)})

    def after_fork(self) -> None:
        """In a child forked by the workflow: a lock of its own (a parent thread may have held this one). The child
        goes on from the parent's account at the fork; the daemon bounds what all of them send together."""
        self._lock = threading.Lock()
