"""Capture of the runner's stdout and stderr at the file-descriptor level.

File descriptors 1 and 2 are replaced by pipes, so ``print``, writes from C extensions and the output
of child processes (which inherit fds 1 and 2) all arrive here. One reader thread for both streams (one
thread start on the way to a session's first output, not two) turns the bytes into ``output`` events:
chunks that end on a line boundary (at most 64 KiB), or a partial line once it has waited 100 ms, so a
progress bar still shows up live.

With a cap (the session's ``output`` limit), the first ``cap`` bytes (UTF-8 of the emitted text) of stdout
and stderr together are emitted; the rest is still read (the session never blocks on a full pipe) but
dropped and counted. The cap is one account (:class:`labd.runner.outputcap.OutputCap`, ``budget``) of everything
the workflow writes into the record: its log records and custom events draw on it too. The first drop
reports once through ``on_truncated`` (``{"cap": ...}``); :meth:`OutputCapture.close` reports the total
(``{"cap": ..., "dropped": ..., "kinds": {kind: bytes}}``).

With secrets to withhold (:meth:`OutputCapture.withhold`), each stream's values are replaced by
``[secret NAME withheld]`` here, in the stream, before it is cut into events: the channel, which does it for every
event (:meth:`labd.runner.channel.Channel.withhold`), finds a value only whole in one event, and a chunk may end in
the middle of one (:mod:`labd.runner.withhold`). A chunk's tail that may be the start of a value (a proper prefix of
one: at most the longest value's length - 1 characters), with any run of overlapping values before it that such a
value would join, is held back and leaves in front of the stream's next chunk; if none comes within ``HOLD_S``, or
the stream or the session ends, it leaves on its own (whole values in it replaced, and a start of a value of 8
characters or more as that value's mark), and the stream watches for the rest: next output that goes on with the
value has the rest replaced by its mark too (``StreamWithholder.split_watched``). Nothing is lost, each
stream keeps its order, and output whose end cannot begin a value (a line ending in a newline no value holds) leaves
at once, after one substring search per value. The cap counts the output with the values replaced: it never keeps
the start of one.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import io
import os
import select
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable

from labd.runner import mphelpers
from labd.runner.outputcap import OutputCap, Report
from labd.runner.withhold import StreamWithholder

__all__ = ["OutputCapture", "prepare_pipes", "report_crash"]

CHUNK = 64 * 1024
PARTIAL_FLUSH_S = 0.1
#: a held tail that may be the start of a secret waits this long (since it was held) for the rest of its stream;
#: then it leaves (as the secret's mark if 8 characters or more) and the stream watches for the rest
HOLD_S = 1.0
COALESCE_S = 0.002  # after a read in a burst, gather more for at most this long: far fewer, larger events
BURST_S = 0.05  # output within this long of the previous chunk is part of a burst
PIPE_SIZE = 1 << 20  # a larger pipe lets a chatty workflow run ahead of the reader instead of blocking
F_SETPIPE_SZ = 1031  # Linux

#: (read, write) pipe pairs made ahead of time by a spare runner (runner/spare.py), used by the next install()
_prepared: list[tuple[int, int]] = []


#: a duplicate of fd 2 as it was before the first install(): the runner's real stderr (the daemon's log)
_real_stderr: int | None = None


def report_crash() -> None:
    """Print the exception being handled on the runner's real stderr: fd 2 may be a capture pipe by now, whose
    reader never gets to emit it when the process exits at once (the runner's last-resort handler)."""
    import traceback

    fd = _real_stderr if _real_stderr is not None else 2
    try:
        os.write(fd, traceback.format_exc().encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def _new_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # not Linux, or above /proc/sys/fs/pipe-max-size: the default will do
        pass
    return r, w


def prepare_pipes() -> None:
    """Make the stdout and stderr pipes now (a spare runner, before its session exists); the next
    :meth:`OutputCapture.install` uses them instead of making its own."""
    while len(_prepared) < 2:
        _prepared.append(_new_pipe())


Emit = Callable[[str, str], None]  # (stream, text)


class OutputCapture:
    """Redirects fds 1 and 2 into pipes read by background threads; ``budget`` is the session's output cap."""

    def __init__(self, emit: Emit, cap: int | None = None, on_truncated: Report | None = None) -> None:
        self._emit = emit
        self.budget = OutputCap(cap, on_truncated)
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._fds: list[int] = []
        self._busy = [0, 0]  # per stream: 1 while the reader holds its bytes not yet emitted
        self._unsent = [0, 0]  # per stream: 1 while the reader keeps a partial line or a held tail back
        # sync() asks the reader to send what it keeps back (a step is ending): it counts its asks up, the reader
        # its answers, and a byte on the wake pipe gets the reader out of select
        self._wake: tuple[int, int] | None = None
        self._flush_asked = self._flush_done = 0
        self._flushed = threading.Condition()
        self._secrets: dict[str, str] = {}  # withheld from the output (see withhold)

    def withhold(self, secrets: dict[str, str]) -> None:
        """Replace these secrets' values in the output by ``[secret NAME withheld]``, wherever the chunks of a stream
        fall (the channel, given the same secrets, replaces them too, but only where one event holds a value whole).
        Without secrets (or with only values too short to be looked for) output is left as it is. Call before
        :meth:`install`."""
        self._secrets = dict(secrets)

    def install(self) -> None:
        global _real_stderr
        if _real_stderr is None:  # where a crash of the runner's own set-up is reported (see report_crash)
            _real_stderr = os.dup(2)
        for fd in (1, 2):
            r, w = _prepared.pop(0) if _prepared else _new_pipe()
            os.dup2(w, fd)
            os.close(w)
            self._fds.append(r)
        self._wake = os.pipe()
        os.set_blocking(self._wake[0], False)
        os.set_blocking(self._wake[1], False)
        self._threads.append(threading.Thread(target=self._read, name="labd-output", daemon=True))
        # Fresh Python-level streams over the new fds, line-buffered so prints appear promptly.
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)
        for t in self._threads:
            t.start()

    def forget_after_fork(self) -> None:
        """In a child forked by the workflow: the readers are the parent's threads; never wait for them."""
        self._fds, self._threads, self._busy, self._unsent, self._wake = [], [], [0, 0], [0, 0], None
        self.budget.after_fork()

    def sync(self, timeout: float = 0.2) -> None:
        """Wait (bounded) until everything written so far has been emitted, so output lands before
        the step boundary that follows it and is attributed to the step that printed it: also a partial line
        (``print(..., end="")``) and a tail held back as the possible start of a secret, which would otherwise
        leave up to :data:`PARTIAL_FLUSH_S` / :data:`HOLD_S` later, in whatever step runs then."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout
        buf = bytearray(4)
        while time.monotonic() < deadline:
            pending = 0
            for fd in self._fds:
                try:
                    fcntl.ioctl(fd, termios.FIONREAD, buf)
                    pending += struct.unpack("i", buf)[0]
                except OSError:
                    pass
            if not pending and not any(self._busy):
                break
            time.sleep(0.0005)
        if any(self._unsent) and self._wake is not None:
            self._send_kept(timeout)

    def _send_kept(self, timeout: float) -> None:
        """Have the reader emit what it keeps back, and wait (bounded) until it has."""
        with self._flushed:  # the reader closes the pipe under this lock when it stops
            if self._wake is None:
                return
            self._flush_asked += 1
            asked = self._flush_asked
            try:
                os.write(self._wake[1], b"!")
            except OSError:  # BlockingIOError: the pipe is full of earlier asks, which wake the reader as well
                pass
            self._flushed.wait_for(lambda: self._flush_done >= asked, timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Flush Python streams, close our write ends, and let the readers drain (bounded wait).

        A child process that still holds fd 1 or 2 open would keep the pipe open forever, so the
        readers stop after ``timeout`` even without end-of-file; and as soon as the only processes left are
        ``multiprocessing``'s helpers, which hold the pipes until the runner exits, once what is in the pipes
        has been emitted (:mod:`labd.runner.mphelpers`).
        """
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
        threads = self._threads

        def ended(wait: float) -> bool:
            for t in threads:
                t.join(wait)
            return not any(t.is_alive() for t in threads)

        if not mphelpers.wait_for(ended, timeout, self._drained):
            self._stop.set()
            with self._flushed:  # out of its select, which has no timeout when nothing is due (it closes this under it)
                if self._wake is not None:
                    with contextlib.suppress(OSError):
                        os.write(self._wake[1], b"!")
            for t in threads:
                t.join(0.5)
        self.budget.final()

    def _drained(self) -> bool:
        """Nothing unread in the pipes, nor read and not yet processed by the reader (what it keeps back, a partial
        line or a held tail, leaves when it stops)."""
        buf = bytearray(4)
        for fd in self._fds:
            try:
                fcntl.ioctl(fd, termios.FIONREAD, buf)
            except OSError:  # -1: closed by the reader at its end-of-file
                continue
            if struct.unpack("i", buf)[0]:
                return False
        return not any(self._busy)

    def _capped(self, stream: str, text: str) -> None:
        """Emit what fits under the cap (counted in UTF-8 bytes of the text); count the rest as dropped."""
        if self.budget.cap is None:
            self._emit(stream, text)
            return
        data = text.encode("utf-8", "surrogatepass")
        keep, first = self.budget.take("output", len(data), whole=False)
        if keep:  # a character cut in two at the cap is dropped whole
            self._emit(stream, text if keep == len(data) else data[:keep].decode("utf-8", "ignore"))
        if first:  # after the head that was kept
            self.budget.report_start()

    def _out(self, st: _Stream, text: str, final: bool = False) -> None:
        """Emit ``text``, the next output of stream ``st``, after what the stream holds back, with secrets replaced;
        hold back in turn a tail that may be the start of one (unless ``final``: the stream ended, or the tail's
        time is up: then a start of 8 characters or more leaves as a mark, and the stream watches for its rest)."""
        withholder = st.withholder
        if withholder is None:  # no secrets: nothing is replaced or held
            if text:
                self._capped(st.name, text)
            return
        if final or st.watch:  # the held text leaves without the rest of a value, or that rest may come now
            text, st.held, st.watch = withholder.split_watched(st.watch, st.held + text, final)
        else:
            text, st.held = withholder.split(st.held + text)
        if text:
            self._capped(st.name, text)
        if st.held:
            st.held_at = time.monotonic()

    def _read(self) -> None:
        withholder = StreamWithholder.of(self._secrets)  # None without secrets
        streams = {fd: _Stream(name, index, withholder)
                   for index, (fd, name) in enumerate(zip(self._fds, ("stdout", "stderr"), strict=True))}
        out = self._out
        wake = self._wake[0] if self._wake is not None else None
        while streams and not self._stop.is_set():
            # Sleep until output comes, or until the oldest held partial line is due (PARTIAL_FLUSH_S without
            # more bytes on its stream) or a held tail is (HOLD_S); with nothing due, until output or a byte on the
            # wake pipe (sync() asks for what is kept back; close() sets _stop, then writes one). No timeout then:
            # an idle session's reader woke 10 times a second for nothing, and 200 idle sessions' readers took
            # ~10 % of a core (docs/benchmarks.md §40).
            now = time.monotonic()
            due = [st.last_data + PARTIAL_FLUSH_S for st in streams.values() if st.pending]
            due += [st.held_at + HOLD_S for st in streams.values() if st.held]
            timeout = max(0.0, min(due) - now) if due else None
            ready, _, _ = select.select([*streams, wake] if wake is not None else list(streams), [], [], timeout)
            asked = None
            if wake is not None and wake in ready:
                ready.remove(wake)
                try:
                    os.read(wake, 4096)
                except BlockingIOError:
                    pass
                with self._flushed:
                    asked = self._flush_asked  # what sync asked so far: answered once the kept text has left
            now = time.monotonic()
            for st in streams.values():
                if st.pending and now - st.last_data >= PARTIAL_FLUSH_S:
                    pending, st.pending = st.pending, ""
                    out(st, pending)
                if st.held and now - st.held_at >= HOLD_S:  # the rest of a secret did not come: release it
                    out(st, "", final=True)
            for fd in ready:
                st = streams[fd]
                self._busy[st.index] = 1
                data = os.read(fd, CHUNK)
                if not data:  # every writer closed it
                    self._finish(fd, streams.pop(fd))
                    continue
                # Within a burst (the last chunk left less than BURST_S ago), coalesce for at most COALESCE_S
                # in all (not per gap: a steady trickle of prints would otherwise be held until a CHUNK piled
                # up). The first output after a quiet spell leaves at once.
                until = now + COALESCE_S if now - st.last_emit < BURST_S else now
                while len(data) < CHUNK:
                    left = until - time.monotonic()
                    if left <= 0 or not select.select([fd], [], [], left)[0]:
                        break
                    more = os.read(fd, CHUNK - len(data))
                    if not more:
                        break
                    data += more
                st.last_emit = st.last_data = time.monotonic()
                text = st.pending + st.decoder.decode(data)
                cut = text.rfind("\n") + 1
                if cut:
                    st.pending = text[cut:]
                    out(st, text[:cut])
                else:
                    st.pending = text
                if len(st.pending) >= CHUNK:
                    pending, st.pending = st.pending, ""
                    out(st, pending)
                # before busy clears: sync() reads "not busy, nothing kept" as "nothing to ask for"
                self._unsent[st.index] = 1 if st.pending or st.held else 0
                self._busy[st.index] = 0
            if asked is not None:  # a step is ending: what this stream keeps back belongs to it
                for st in streams.values():
                    if st.pending:
                        pending, st.pending = st.pending, ""
                        out(st, pending)
                    if st.held:
                        out(st, "", final=True)
            for st in streams.values():
                self._unsent[st.index] = 1 if st.pending or st.held else 0
            if asked is not None:
                with self._flushed:
                    self._flush_done = asked
                    self._flushed.notify_all()
        for fd, st in streams.items():  # stopped (close() timed out waiting for end of file)
            self._finish(fd, st)
        with self._flushed:
            pipe, self._wake = self._wake, None
            self._flush_done = self._flush_asked  # nothing is kept back any more
            self._flushed.notify_all()
        for end in pipe or ():
            os.close(end)

    def _finish(self, fd: int, st: _Stream) -> None:
        pending, st.pending = st.pending + st.decoder.decode(b"", final=True), ""
        self._out(st, pending, final=True)  # what it held back too: the stream has ended
        self._busy[st.index] = self._unsent[st.index] = 0
        # out of the list first: sync() and _drained() ask the kernel about these fds, and a number closed here may
        # be reused at once by another thread's open()
        self._fds[st.index] = -1
        os.close(fd)


class _Stream:
    """One captured stream's reading state."""

    def __init__(self, name: str, index: int, withholder: StreamWithholder | None = None) -> None:
        self.name, self.index, self.withholder = name, index, withholder
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        self.pending = ""  # a partial line held for more
        self.held = ""  # a tail held back as it may be the start of a secret (before pending in the stream)
        self.held_at = 0.0  # monotonic time it was held (it leaves HOLD_S later if nothing else takes it out)
        self.watch = ""  # the start of a secret that left on its own, whose rest may still come (split_watched)
        self.last_emit = 0.0  # monotonic time of the last chunk read (burst detection)
        self.last_data = 0.0  # ... and when bytes last came (a held partial line leaves PARTIAL_FLUSH_S later)
