"""Which secret values are withheld from a session's events, and how a captured output stream withholds them even
where the capture's chunks would split one.

:meth:`labd.runner.channel.Channel.emit` replaces each withheld value by ``[secret NAME withheld]`` in every event,
one substring replacement on the event's encoded bytes. That only works on an event holding the whole value; the
output capture (:mod:`labd.runner.capture`) cuts a stream into chunks wherever it likes (a partial line after
100 ms, 64 KiB of one long line, a line boundary inside a multi-line value). So for output, a
:class:`StreamWithholder` does the replacement on the stream itself: what leaves is the text with every whole
value replaced, up to a tail that may be the start of a value (a proper prefix of one, so at most the longest
value's length - 1 characters), which waits in front of the stream's next chunk (``OutputCapture._out``).
The text that leaves is what replacing the values in the whole stream at once would give, however it was cut;
the channel still looks at every event as well.

Matching is on the decoded text: the channel looks for the value JSON-escaped in the JSON-encoded event, which
holds the text JSON-escaped character by character, so both find a value in the same places.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

import orjson

__all__ = ["MIN_WITHHELD", "StreamWithholder", "guard_cuts", "head_cut", "looked_for", "mark", "tail_start",
           "withhold_event"]

MIN_WITHHELD = 8  # characters: a shorter "secret" value is not looked for in events (it would match ordinary text)
_HEAD = 16  # characters of a possible tail compared before all of it


def looked_for(secrets: dict[str, str]) -> list[tuple[str, str]]:
    """(name, value) of the secrets looked for in events, longest value first (a value that holds another is
    replaced whole); values under :data:`MIN_WITHHELD` characters are left out."""
    return [(n, v) for n, v in sorted(secrets.items(), key=lambda kv: -len(kv[1])) if len(v) >= MIN_WITHHELD]


#: the values withheld from this process's events (:meth:`labd.runner.channel.Channel.withhold` sets them): a text cut
#: short to fit a field (a step name, an error, the input of a replay miss) is never cut inside one of them, where the
#: piece kept would not be found whole and would be recorded as it is
_guarded: list[str] = []


def guard_cuts(values: list[str]) -> None:
    """Cut no text inside these values from now on (:func:`head_cut`, :func:`tail_start`)."""
    _guarded[:] = values


def head_cut(text: str, limit: int) -> int:
    """How much of the start of ``text`` to keep, at most ``limit`` characters: less where a withheld value would be
    cut in two (the kept head then ends before it)."""
    cut = limit
    moved = bool(_guarded) and len(text) > limit
    while moved:
        moved = False
        for value in _guarded:
            p = text.find(value, max(0, cut - len(value) + 1), cut + len(value) - 1)  # the first that may cross
            if 0 <= p < cut:
                cut, moved = p, True
    return cut


def tail_start(text: str, limit: int) -> int:
    """Where the end of ``text`` to keep begins, at most ``limit`` characters: later where a withheld value would be cut
    in two (the kept tail then begins after it)."""
    start = max(0, len(text) - limit)
    moved = bool(_guarded) and start > 0
    while moved:
        moved = False
        for value in _guarded:
            size = len(value)
            p = text.find(value, max(0, start - size + 1), start + size - 1)
            while 0 <= p < start:  # crosses the start: keep from its end on (a later one may cross the new start)
                start, moved = p + size, True
                p = text.find(value, max(0, start - size + 1), start + size - 1)
    return start


def mark(name: str) -> str:
    """What a withheld value of secret ``name`` reads as in events."""
    return f"[secret {name} withheld]"


def withhold_event(raw: bytes, encoded: list[tuple[bytes, bytes]], plain: list[tuple[str, str]]) -> bytes:
    """An encoded event with every withheld value replaced by its mark: ``encoded`` holds (value, mark) as they read
    inside a JSON string, ``plain`` the same pairs as text, longest value first.

    One ``bytes.replace`` per value (it returns the event itself when the value is absent: the usual case). A value
    can also match where the event holds no such text, inside an escape sequence: the secret ``nabcdefgh`` in the
    encoded text ``\\nabcdefgh`` (a newline, then ``abcdefgh``); replacing there would leave ``\\[secret ...``, which
    is not JSON. Such a result never decodes (a mark begins with ``[``), so when something was replaced the result is
    decoded once, and if it does not decode the values are replaced in the decoded event's strings instead."""
    out = raw
    for value, marked in encoded:
        out = out.replace(value, marked)
    if out is raw:
        return raw
    try:
        orjson.loads(out)
        return out
    except orjson.JSONDecodeError:
        return orjson.dumps(_replaced(orjson.loads(raw), plain), option=orjson.OPT_NON_STR_KEYS)


def _replaced(value: Any, plain: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for secret, marked in plain:
            value = value.replace(secret, marked)
        return value
    if isinstance(value, list):
        return [_replaced(v, plain) for v in value]
    if isinstance(value, dict):
        return {_replaced(k, plain): _replaced(v, plain) for k, v in value.items()}
    return value


class StreamWithholder:
    """Replaces withheld values in an output stream's text as it comes, chunk by chunk. It keeps no state: the caller
    holds, per stream, what :meth:`split` leaves, and puts it in front of that stream's next text."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        #: value -> its mark (the first name with that value, as in the channel's longest-first list)
        self.marks: dict[str, str] = {}
        for name, value in pairs:
            self.marks.setdefault(value, mark(name))
        self.values = sorted(self.marks, key=len, reverse=True)
        # For the tail search, by the character a proper prefix of some value can end with: where in which value
        # (a tail of a text ending in that character can only be such a prefix), as (-index, value), ascending, so
        # the first that matches is the longest tail. A text ending in none of them needs no look at all.
        ends: dict[str, list[tuple[int, str]]] = {}
        for value in self.values:
            for i, ch in enumerate(value[:-1]):
                ends.setdefault(ch, []).append((-i, value))
        self._ends = {ch: ([i for i, _ in sorted(at)], [v for _, v in sorted(at)]) for ch, at in ends.items()}

    @classmethod
    def of(cls, secrets: dict[str, str]) -> StreamWithholder | None:
        """The withholder for these secrets, or None when none is looked for (then output is left alone)."""
        pairs = looked_for(secrets)
        return cls(pairs) if pairs else None

    def split(self, text: str, final: bool = False) -> tuple[str, str]:
        """(what may leave now, with every whole value replaced by its mark; the rest, as it came, to be held and
        put in front of the stream's next text). The rest is the longest tail of ``text`` that is a proper prefix
        of a value (it may go on in the stream's next bytes); none when ``final`` (the stream ended, or the rest of
        a value did not come in time: what is held leaves as it is, whole values in it still replaced).

        Values are replaced leftmost first, at one place the longest: what replacing them in the whole stream at
        once gives, however it is cut (a value that starts in the held tail is decided when more text is there)."""
        cut = len(text) if final else self.tail(text, 0)
        for value in self.values:  # the usual case: one substring search per value, none found
            if value in text:
                break
        else:
            return text[:cut], text[cut:]
        at = {v: p for v in self.values if (p := text.find(v)) != -1}  # the next place of each value found
        out: list[str] = []
        pos = 0
        if len(at) == 1:  # one value (however often): no choosing between values
            [(value, p)] = at.items()
            marked, size = self.marks[value], len(value)
            while 0 <= p < cut:
                out += (text[pos:p], marked)
                pos = p + size
                if pos > cut:
                    cut = self.tail(text, pos)
                p = text.find(value, pos)
            at = {}
        while at:
            value = min(at, key=lambda v: (at[v], -len(v)))  # leftmost; there, the longest
            p = at[value]
            if p >= cut:  # in the held tail: decided once more of the stream is there
                break
            out += (text[pos:p], self.marks[value])
            pos = p + len(value)
            if pos > cut:  # the value went past where the tail began: the tail is after it, if any
                cut = self.tail(text, pos)
            at = {v: q if q >= pos else text.find(v, pos) for v, q in at.items()}
            at = {v: q for v, q in at.items() if q != -1}
        out.append(text[pos:cut])
        return "".join(out), text[cut:]

    def tail(self, text: str, start: int = 0) -> int:
        """Where the longest tail of ``text`` that begins at ``start`` or later and is a proper prefix of some
        value begins (``len(text)``: none)."""
        n = len(text)
        if n <= start:
            return n
        at = self._ends.get(text[-1])
        if at is None:  # the usual case (a line ending "\n" no value holds): one dict look-up
            return n
        neg, values = at
        # a tail text[p:] ending at value[i] begins at p = n - 1 - i: only i <= n - 1 - start can begin in time
        for j in range(bisect_left(neg, start + 1 - n), len(neg)):
            p = n - 1 + neg[j]
            value = values[j]
            # value's head first: a line of dashes against a PEM key does not copy the whole tail at every dash
            if value.startswith(text[p:p + _HEAD]) and (n - p <= _HEAD or value.startswith(text[p:])):
                return p
        return n
