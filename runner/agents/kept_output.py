"""What the record keeps of a program's output (``run_code``'s ``code.execution``): its start and its end.

The runner read a program's whole output into memory and recorded it in one event: a program printing 17 MiB had
its whole ``code.execution`` (code, exit code, output) replaced by ``event.truncated``, as an event must fit in one
message, and 100 MB of output took the runner to 629 MB. :class:`KeptOutput` reads it as it comes and keeps the first
:data:`KEPT_HEAD` and last :data:`KEPT_TAIL` bytes, counting the bytes between them. 1 MiB each: JSON writes a
control character in six bytes, so even such output stays under the 16 MiB message.

A cut never falls inside one of the session's secrets (:func:`labd.runner.withhold.head_cut`, ``tail_start``): the
event's withholding replaces a value found whole, and a piece of one left at a cut would be recorded as it is.
"""

from __future__ import annotations

import asyncio
from collections import deque

from labd.runner.withhold import head_cut, tail_start

__all__ = ["KEPT_HEAD", "KEPT_TAIL", "KeptOutput"]

KEPT_HEAD = KEPT_TAIL = 1 << 20
#: bytes read past each cut: a secret that crosses it is found whole there, and the cut moved off it
MARGIN = 64 << 10


def _text(data: bytes) -> str:
    """Bytes as text with every byte kept (undecodable ones as surrogates), so that a cut counts bytes back exactly."""
    return data.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class KeptOutput:
    """A program's output as the record keeps it; :meth:`read` it to its end, then :meth:`text`."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.total = 0

    async def read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(1 << 16):
            self.total += len(chunk)
            room = KEPT_HEAD + MARGIN - len(self.head)
            if room > 0:
                self.head += chunk[:room]
                chunk = chunk[room:]
            if not chunk:
                continue
            self.tail.append(chunk)
            self.tail_size += len(chunk)
            while self.tail_size - len(self.tail[0]) >= KEPT_TAIL + MARGIN:  # whole chunks the tail no longer needs
                self.tail_size -= len(self.tail.popleft())

    def text(self) -> tuple[str, int]:
        """The output kept (undecodable bytes as ``\\xNN``; a line saying how many bytes are left out where they
        were), and that number of bytes (0: all of it is kept)."""
        head, tail = bytes(self.head), b"".join(self.tail)
        if self.total <= KEPT_HEAD + KEPT_TAIL:  # all of it is in hand: kept whole
            return (head + tail).decode("utf-8", "backslashreplace"), 0
        whole = _text(head)  # the head's first KEPT_HEAD bytes, less where a secret crosses that cut
        kept_head = whole[:head_cut(whole, len(_text(head[:KEPT_HEAD])))]
        whole = _text(tail)  # likewise the tail's last KEPT_TAIL bytes
        kept_tail = whole[tail_start(whole, len(_text(tail[-KEPT_TAIL:]))):]
        first, last = _bytes(kept_head), _bytes(kept_tail)
        dropped = self.total - len(first) - len(last)
        gap = f"\n… [{dropped:,} bytes of output not recorded]\n".encode()
        return (first + gap + last).decode("utf-8", "backslashreplace"), dropped
