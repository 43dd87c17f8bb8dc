"""The Ray launcher's driver process, as the daemon sees it: a child that speaks JSON lines, started without waiting.

Connecting to a cluster can take a minute (``ray.init`` retries an address that does not answer). The daemon never
waits for it: :meth:`DriverLink.start` spawns the driver and returns, requests sent while it connects wait in an
outbox and go out once it says ``ready``, and :meth:`DriverLink.poll` (called from the daemon's main loop) reads what
the driver wrote, along with the link's own changes of state as messages of its own (``op`` starting with ``_``):

- ``{"op": "_ready"}``: the driver is connected; the outbox has been sent;
- ``{"op": "_failed", "error"}``: a start failed (the driver said why, ended, or did not connect within the start
  timeout); what the outbox held was not sent. The next start is allowed after a backoff (15 s, doubling to 2 min);
- ``{"op": "_gone"}``: a driver that was connected ended.

Before: a driver start held the main loop until the driver connected, up to its 60 s timeout, and a daemon whose
cluster did not answer at start did not start at all (Ray review). Only a start that cannot work anywhere fails the
daemon's start: Ray not installed (:meth:`DriverLink.wait_loaded`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from labd.daemon.launcher import LaunchError, close_pipes, readable

__all__ = ["DriverLink", "DOWN_BACKOFF_S", "DOWN_BACKOFF_MAX_S"]

DOWN_BACKOFF_S = 15.0  # after a driver start the cluster did not answer, the next is allowed this much later ...
DOWN_BACKOFF_MAX_S = 120.0  # ... doubling up to this
OUTBOX_MAX = 10_000  # requests held while a driver connects (each session's spawn or adoption, and signals)


class DriverLink:
    """One driver process at a time: ``state`` is ``"none"``, ``"starting"`` or ``"ready"``; ``down`` is
    ``(since, error)`` while the cluster does not answer (from a failed start until the next one connects)."""

    def __init__(self, address: str, namespace: str, env: dict[str, str], timeout: float, log: Any) -> None:
        self.address, self.namespace = address, namespace
        self._env, self._timeout, self.log = env, timeout, log
        self.state = "none"
        self.down: tuple[float, str] | None = None
        self.retry_at = 0.0
        self._backoff = 0.0
        self._deadline = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._outbox: list[dict[str, Any]] = []
        self._out: list[dict[str, Any]] = []  # messages read but not yet returned by poll()
        self._ended = False  # wait_loaded() read the driver's end: poll() reports it
        self.info: dict[str, Any] = {}  # the driver's ready message (Ray's version, nodes)
        #: the driver's command line (a test gives one of its own)
        self.command = [sys.executable, "-P", "-m", "labd.daemon.ray_driver", address, namespace]

    def may_start(self) -> bool:
        """No driver, and no backoff in force."""
        return self.state == "none" and time.monotonic() >= self.retry_at

    def start(self) -> None:
        """Spawn a driver; it connects in the background (``poll`` says how that went)."""
        self._buf = b""
        self._ended = False
        self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self._env,
                                      start_new_session=True, close_fds=True)
        assert self._proc.stdout is not None  # noqa: S101 - Popen contract
        os.set_blocking(self._proc.stdout.fileno(), False)
        self.state, self._deadline = "starting", time.monotonic() + self._timeout

    def wait_loaded(self) -> None:
        """Wait until the driver has imported Ray (a second or two); raise :class:`LaunchError` if it cannot, which
        no later start would mend (Ray not installed). Messages read meanwhile are kept for :meth:`poll`."""
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            msgs, ended = self._read()
            self._out.extend(msgs)
            fatal = next((m for m in msgs if m.get("op") == "error" and m.get("fatal")), None)
            if fatal is not None:  # read with the driver's end, or before it: either way, said
                self.kill()
                raise LaunchError(str(fatal.get("message")))
            if ended:
                self._ended = True  # poll() says how (the driver's own error, if it gave one)
                return
            if any(m.get("op") in ("loaded", "ready", "error") for m in msgs):
                return
            if self._proc is not None and self._proc.stdout is not None:
                readable(self._proc.stdout.fileno(), 0.2)  # poll(), not select(): the daemon's fds may be above 1024

    def refusal(self) -> str:
        """Why a launch fails now (no driver, in backoff)."""
        since, error = self.down or (time.time(), "no driver")
        return (f"the Ray cluster at {self.address} does not answer (since "
                f"{time.strftime('%H:%M:%S', time.localtime(since))}: {error}); labd tries again in "
                f"{max(0.0, self.retry_at - time.monotonic()):.0f} s")

    def send(self, msg: dict[str, Any]) -> None:
        """Send ``msg`` now (connected) or once the driver is (connecting); :class:`LaunchError` without a driver."""
        if self.state == "starting":
            if len(self._outbox) >= OUTBOX_MAX:
                raise LaunchError(f"{OUTBOX_MAX} requests already wait for the Ray driver to connect")
            self._outbox.append(msg)
            return
        if self.state != "ready" or self._proc is None or self._proc.stdin is None:
            raise LaunchError(self.refusal() if self.down else "the Ray driver is not running")
        try:
            self._proc.stdin.write(json.dumps(msg).encode() + b"\n")
            self._proc.stdin.flush()
        except OSError as exc:  # it died: poll() reports it gone
            raise LaunchError(f"the Ray driver is not running: {exc}") from exc

    def poll(self) -> list[dict[str, Any]]:
        """What the driver wrote since the last call, in order, with the link's own ``_ready``, ``_failed`` and
        ``_gone`` among them."""
        msgs, ended = self._read()
        ended, self._ended = ended or self._ended, False
        held, self._out = self._out, []
        out: list[dict[str, Any]] = []
        error: str | None = None  # what a driver that could not connect said
        for msg in [*held, *msgs]:
            op = msg.get("op")
            if op == "ready" and self.state == "starting":
                self.state, self.down, self._backoff, self.info = "ready", None, 0.0, msg
                self.log.info("Ray launcher ready", address=self.address, ray=msg.get("ray"), nodes=msg.get("nodes"))
                outbox, self._outbox = self._outbox, []
                for kept in outbox:
                    try:
                        self.send(kept)
                    except LaunchError:
                        break  # it died at once: its end is read next
                out.append({"op": "_ready"})
            elif op == "error" and self.state == "starting":
                error = str(msg.get("message") or "the Ray driver did not start")
            elif op != "loaded":
                out.append(msg)
        if ended:
            was = self.state
            self._close()
            if was == "starting":
                out.append(self._failed(error or "the Ray driver ended before it connected", closed=True))
            elif was == "ready":
                out.append({"op": "_gone"})
        elif error is not None:
            out.append(self._failed(error))
        elif self.state == "starting" and time.monotonic() >= self._deadline:
            out.append(self._failed(f"the Ray driver did not connect within {self._timeout:.0f} s"))
        return out

    def _read(self) -> tuple[list[dict[str, Any]], bool]:
        """The messages the driver wrote that can be read now, and whether its output has ended."""
        if self._proc is None or self._proc.stdout is None:
            return [], False
        ended = False
        while True:
            try:
                chunk = os.read(self._proc.stdout.fileno(), 65536)
            except BlockingIOError:
                break
            if not chunk:
                ended = True
                break
            self._buf += chunk
        msgs = []
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                msg = json.loads(line)
            except ValueError:  # something Ray printed: not ours
                continue
            if isinstance(msg, dict):
                msgs.append(msg)
        return msgs, ended

    def _failed(self, error: str, closed: bool = False) -> dict[str, Any]:
        """A start that failed: the driver ended (``closed``: already reaped), the backoff doubled; the message
        :meth:`poll` returns for it."""
        if not closed:
            self.kill()
        self._outbox = []
        self._backoff = min(DOWN_BACKOFF_MAX_S, max(DOWN_BACKOFF_S, self._backoff * 2))
        self.retry_at = time.monotonic() + self._backoff
        if self.down is None:
            self.down = (time.time(), error[:300])
        self.log.error("the Ray cluster does not answer", address=self.address, error=error[:300],
                       next_try_s=self._backoff)
        return {"op": "_failed", "error": error[:500]}

    def _close(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            close_pipes(self._proc)
        self._proc, self.state = None, "none"

    def stop(self) -> None:
        """End the driver (its stdin closed: it exits; its detached actors run on for the next driver)."""
        if self._proc is not None:
            if self._proc.stdin:
                try:
                    self._proc.stdin.close()
                except OSError:
                    pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout:
                self._proc.stdout.close()
        self._proc, self.state = None, "none"

    def kill(self) -> None:
        """End a driver that is still connecting at once (its ``ray.init`` reads no stdin), a connected one as
        :meth:`stop` does."""
        if self._proc is not None and self.state == "starting":
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)  # its own session (start_new_session): whatever it spawned
            except OSError:
                pass
        self.stop()

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"driver": self.state == "ready" and self._proc is not None and self._proc.poll() is None,
                               "driver_state": self.state}
        if self.down is not None:
            out.update(down_since=self.down[0], error=self.down[1],
                       retry_in=max(0.0, self.retry_at - time.monotonic()))
        return out
