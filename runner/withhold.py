"""Which secret values are withheld from a session's events, and how a captured output stream withholds them even
where the capture's chunks would split one.

What a text with withheld values reads as (the same for events and for output streams): every character that
belongs to an occurrence of any value is replaced, overlapping occurrences included. Occurrences that overlap
(share a character; two that only touch do not) make one *run*, which reads as the marks ``[secret NAME withheld]``
of the values in it, each once, in the order in which they first begin there; an occurrence that lies within
another one (a value inside a longer value) adds no mark. A value on its own reads as its mark, as before; the
secrets ``A = AAAAkey1XYZW`` and ``B = XYZWmore5678`` in ``AAAAkey1XYZWmore5678`` read as
``[secret A withheld][secret B withheld]``, and no piece of either is left (replacing one value after the other
left ``more5678``).

:meth:`labd.runner.channel.Channel.emit` does this on every event's encoded bytes (:func:`withhold_event`: one
substring replacement per value when none is there, the usual case). That only works on an event holding the whole
value; the output capture (:mod:`labd.runner.capture`) cuts a stream into chunks wherever it likes (a partial line
after 100 ms, 64 KiB of one long line, a line boundary inside a multi-line value). So for output, a
:class:`StreamWithholder` does the replacement on the stream itself: what leaves is the text with its values
replaced, up to a tail that may still change: one that may be the start of a value (a proper prefix of one, so at
most the longest value's length - 1 characters), together with a run that such a value would overlap. That tail
waits in front of the stream's next chunk (``OutputCapture._out``). The text that leaves is what replacing the values
in the whole stream at once would give, however it was cut (except in a run longer than
:attr:`StreamWithholder.hold_max`, see there); the channel still looks at every event as well.

A held tail waits only so long (the capture's ``HOLD_S``): a workflow that pauses longer mid-secret has it leave on
its own, and its rest come in text that holds no whole value. So a tail that leaves this way
(:meth:`StreamWithholder.split_watched`) leaves as the value's mark if it is :data:`MIN_WITHHELD` characters or more
(shorter, as it is), and the stream watches for the rest: next text that goes on with the value has the rest
replaced by the mark too (the value reads as two marks of its name), text that may be the middle of it waits again
(and leaves as a mark if its wait ends too), other text ends the watch. Only the first piece of a value printed
across such pauses can leave in clear, and only when under :data:`MIN_WITHHELD` characters.

Matching is on the decoded text: the channel looks for the value JSON-escaped in the JSON-encoded event, which
holds the text JSON-escaped character by character, so both find a value in the same places (a match that begins
inside an escape sequence is not one in the text, and is left alone).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Any, AnyStr

import orjson

__all__ = ["HOLD_RUN", "MIN_WITHHELD", "StreamWithholder", "guard_cuts", "head_cut", "looked_for", "mark",
           "marked", "tail_start", "text_withholder", "withhold_event"]

MIN_WITHHELD = 8  # characters: a shorter "secret" value is not looked for in events (it would match ordinary text)
_HEAD = 16  # characters of a possible tail compared before all of it
#: characters of output a stream holds back at most for a run of overlapping values that may go on (or twice the
#: longest value, if more): see :attr:`StreamWithholder.hold_max`
HOLD_RUN = 8192


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


def marked(secrets: Mapping[str, str]) -> list[tuple[str, str]]:
    """(value, what it reads as) of the secrets looked for in events (:func:`looked_for`'s, in its order)."""
    return [(v, mark(n)) for n, v in looked_for(dict(secrets))]


def text_withholder(secrets: Mapping[str, str]) -> Callable[[str], str] | None:
    """A function replacing these secrets' values in a text as events read them (``[secret NAME withheld]``), or
    None when none is looked for. For a text that travels in an event under its own checksum (a blob, addressed by
    its sha256): withheld before the checksum is taken, since the event's own pass (:func:`withhold_event`) would
    change the text after it, and the daemon refuses a blob that does not match its address (the whole event
    was lost: a review's ``code.execution`` whose 5,000-character code held an API key)."""
    pairs = marked(secrets)
    if not pairs:
        return None
    values, marks = [v for v, _ in pairs], [m for _, m in pairs]
    return lambda text: _replaced_in(text, values, marks)


def _found(text: AnyStr, values: Sequence[AnyStr]) -> list[tuple[int, int, int]]:
    """Every occurrence of every value in ``text``, overlapping ones too, as (where, -length, index of the value):
    leftmost first, at one place the longest first."""
    found = []
    for i, value in enumerate(values):
        size = -len(value)
        p = text.find(value)
        while p != -1:
            found.append((p, size, i))
            p = text.find(value, p + 1)  # the next one may begin inside this one
    found.sort()
    return found


def _links(run: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """(where, index of the value) of each occurrence of a run (as :func:`_found` gives them) that lies within no
    other one: that goes past the end of those before it (one that does not lies within one that begins no later
    and ends no earlier)."""
    links, end = [], -1
    for p, size, i in run:
        if p - size > end:
            links.append((p, i))
            end = p - size
    return links


def _marked(links: list[tuple[int, int]], marks: Sequence[AnyStr]) -> AnyStr:
    """What a run with these links reads as: the marks of its values, each once, in the order they first begin."""
    return marks[0][:0].join(marks[i] for i in dict.fromkeys(i for _, i in links))


def _spliced(text: AnyStr, found: list[tuple[int, int, int]], marks: Sequence[AnyStr], cut: int,
             hold_max: int = 0, pos: int = 0) -> tuple[list[AnyStr], int]:
    """(the pieces of ``text[pos:held]`` with each run of the occurrences ``found`` replaced by what it reads as;
    where the rest, to be held, begins): the first run that goes past ``cut`` (where a value may begin that the
    text's continuation completes) is held from its start on, or, if that makes more than ``hold_max`` characters,
    from its last link that begins no later than ``cut`` on (see :attr:`StreamWithholder.hold_max`). A run that
    begins before ``pos`` reads as its marks (the text before ``pos`` left already: see
    :meth:`StreamWithholder.split_watched`)."""
    out: list[AnyStr] = []
    k = 0
    total = len(found)
    while k < total:  # a run a turn: an occurrence that begins before it ends (not where it ends) is in it
        start, size, i = found[k]
        end = start - size
        k += 1
        if k < total and found[k][0] < end:  # more than one occurrence: rare
            first = k - 1
            while k < total and found[k][0] < end:
                end = max(end, found[k][0] - found[k][1])
                k += 1
            links = _links(found[first:k])
            if end > cut and start < cut and len(text) - start > hold_max:  # held from its last link on instead
                at = [p for p, _ in links if p <= cut][-1]
                out += (text[pos:start], _marked([link for link in links if link[0] < at], marks))
                return out, at
            marked = _marked(links, marks)
        else:
            marked = marks[i]
        if end > cut:  # a run the held text may still join: held whole (or from the tail on, if that is earlier)
            cut = min(cut, start)
            break
        out += (text[pos:start], marked)
        pos = end
    out.append(text[pos:cut])
    return out, cut


def _replaced_in(text: str, values: Sequence[str], marks: Sequence[str]) -> str:
    """``text`` with every occurrence of ``values`` replaced, overlapping ones as one run (the module's docstring):
    ``marks[i]`` is what ``values[i]`` reads as; of two equal values, the first one's mark is used."""
    found = _found(text, values)
    return "".join(_spliced(text, found, marks, len(text))[0]) if found else text


def withhold_event(raw: bytes, encoded: list[tuple[bytes, bytes]], plain: list[tuple[str, str]]) -> bytes:
    """An encoded event with every withheld value replaced, overlapping ones as one run (the module's docstring):
    ``encoded`` holds (value, mark) as they read inside a JSON string, ``plain`` the same pairs as text, longest
    value first.

    One ``bytes.replace`` per value when none is there (it returns the event itself: the usual case). A value can
    also match where the event holds no such text, inside an escape sequence: the secret ``nabcdefgh`` in the
    encoded text ``\\nabcdefgh`` (a newline, then ``abcdefgh``); such a match is left alone. One outside a string
    (a value of digits in a number) would leave something that is not JSON (a mark begins with ``[secret``), so when
    something was replaced the result is decoded once, and if it does not decode the values are replaced in the
    decoded event's strings instead."""
    out = raw
    for value, marked in encoded:
        out = out.replace(value, marked)
    return raw if out is raw else _withheld(raw, encoded, plain)


def _withheld(raw: bytes, encoded: list[tuple[bytes, bytes]], plain: list[tuple[str, str]]) -> bytes:
    """:func:`withhold_event` where a value matched (it may be a look-alike only)."""
    found = [f for f in _found(raw, [v for v, _ in encoded]) if not _in_escape(raw, f[0])]
    if not found:
        return raw
    out = b"".join(_spliced(raw, found, [m for _, m in encoded], len(raw))[0])
    try:
        orjson.loads(out)
        return out
    except orjson.JSONDecodeError:
        values, marks = [v for v, _ in plain], [m for _, m in plain]
        return orjson.dumps(_replaced(orjson.loads(raw), values, marks), option=orjson.OPT_NON_STR_KEYS)


def _in_escape(raw: bytes, p: int) -> bool:
    """Whether byte ``p`` of JSON text lies inside an escape sequence, after its backslash (``\\n``, ``\\\\``,
    ``\\u00e9``...): a value found there does not begin at a character of the text."""
    k = 0
    while k < p and raw[p - 1 - k] == 0x5C:  # the backslashes just before p
        k += 1
    if k:  # an odd number: the last begins an escape p is the rest of; even: p follows whole "\\" escapes
        return k % 2 == 1
    b = raw.rfind(b"\\u", max(0, p - 5), p)  # a \uXXXX escape that p may be in (p is at most 5 bytes after it)
    if b == -1:
        return False
    k = 0
    while k <= b and raw[b - k] == 0x5C:
        k += 1
    return k % 2 == 1  # the backslash begins an escape (it is not the second of "\\")


def _replaced(value: Any, values: list[str], marks: list[str]) -> Any:
    if isinstance(value, str):
        return _replaced_in(value, values, marks)
    if isinstance(value, list):
        return [_replaced(v, values, marks) for v in value]
    if isinstance(value, dict):
        return {_replaced(k, values, marks): _replaced(v, values, marks) for k, v in value.items()}
    return value


class StreamWithholder:
    """Replaces withheld values in an output stream's text as it comes, chunk by chunk. It keeps no state: the caller
    holds, per stream, what :meth:`split` leaves, and puts it in front of that stream's next text (and the watch
    :meth:`split_watched` gives, which it passes with that text)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        #: value -> its mark (the first name with that value, as in the channel's longest-first list)
        self.marks: dict[str, str] = {}
        for name, value in pairs:
            self.marks.setdefault(value, mark(name))
        self.values = sorted(self.marks, key=len, reverse=True)
        self._marks = [self.marks[v] for v in self.values]
        #: whether an occurrence of the value can begin inside another one (a proper suffix of it begins it)
        self._overlapping = [any(v.startswith(v[k:]) for k in range(1, len(v)) if v[k] == v[0]) for v in self.values]
        #: the most :meth:`split` holds back for a run of overlapping values that may go on (a value of the stream's
        #: next text may overlap it): a run that would make the held text longer leaves up to the last occurrence
        #: in it that begins before the tail (it reads as its marks up to there; that occurrence and what follows
        #: are held, so the run's rest reads as marks of its own: its marks may then repeat a name, the one way
        #: the result differs from the whole stream at once, and still no character of a value is left). Only
        #: values that overlap themselves or each other over and over (``--------``) make such a run; the held
        #: text is then at most twice the longest value.
        self.hold_max = max(HOLD_RUN, 2 * len(self.values[0]))
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
        """(what may leave now, with every value replaced; the rest, as it came, to be held and put in front of the
        stream's next text). The rest begins at the longest tail of ``text`` that is a proper prefix of a value (it
        may go on in the stream's next text), or earlier, at the start of a run of values that such a value would
        overlap (a value that begins inside an occurrence and goes on past it joins its run); none when ``final``
        (all of it leaves as it is, whole values in it still replaced; the capture uses :meth:`split_watched` for
        a held text that leaves without the rest of a value, and for the text after it).

        What leaves is what replacing the values in the whole stream at once gives, overlapping ones as one run
        (the module's docstring), however the stream is cut (a value that may begin in the held rest is decided
        when more of the stream is there), as long as no run gets longer than :attr:`hold_max`."""
        cut = len(text) if final else self.tail(text, 0)
        for value in self.values:  # the usual case: one substring search per value, none found
            if value in text:
                break
        else:
            return text[:cut], text[cut:]
        j = self.values.index(value)
        if not self._overlapping[j] and not any(v in text for v in self.values[j + 1:]):  # one value, apart
            return self._one(text, value, self._marks[j], cut)
        out, cut = _spliced(text, _found(text, self.values), self._marks, cut, self.hold_max)
        return "".join(out), text[cut:]

    def split_watched(self, watch: str, text: str, final: bool = False) -> tuple[str, str, str]:
        """:meth:`split` where the held text leaves without waiting for more (``final``: its hold expired, or the
        stream ended) and for the stream's next text after that: (what may leave now; the rest to hold; the new
        watch). ``watch`` is the end of what the stream released last that is a proper prefix of some value (""
        when none): the start of a secret whose rest may still come, in the stream's next text, however late.

        Released text whose end is the start of a value of :data:`MIN_WITHHELD` characters or more leaves that
        start as the value's mark; a shorter start (``sk-``, which ordinary text holds too) leaves as it is. Either
        way it is watched. Next text that goes on with a watched value has the rest of the value replaced by the
        value's mark, so the value reads as two marks of one name: a mark of its own for a partial value would tell
        a reader nothing more and give the store a second form to search for. Text that may still be the middle of
        a watched value (a proper prefix of its rest) is held, and on its own expiry leaves as the value's mark
        whatever its length, the watch going on. Text that goes on with no watched value ends the watch: as
        :meth:`split` (``text[:cut]``, ``text[cut:]``) then, if not ``final``. Several values may begin alike, or
        the start of one end with the start of another: the watch is the released text itself, so all go on."""
        k = len(watch)
        whole = watch + text
        t = self.tail(whole)
        if t < k:  # text is no more than the middle of a value that began in the watched part: hold it, or mask it
            if not final or not text:
                return "", text, watch
            return self._marks[self._prefixed(whole[t:])], "", whole[t:]
        found = [f for f in _found(whole, self.values) if f[0] - f[1] > k]  # the watched part's left already
        cut = len(whole) if final else t
        if final and len(whole) - t >= MIN_WITHHELD:  # the start of a value leaves without its rest: as a mark
            found.append((t, t - len(whole), self._prefixed(whole[t:])))
            found.sort()
        if not found:
            return whole[k:cut], whole[cut:], whole[t:] if final else ""
        out, cut = _spliced(whole, found, self._marks, cut, self.hold_max, k)
        return "".join(out), whole[cut:], whole[t:] if final else ""

    def _prefixed(self, start: str) -> int:
        """The index of the first (longest) value that ``start`` is a proper prefix of."""
        return next(i for i, v in enumerate(self.values) if len(v) > len(start) and v.startswith(start))

    @staticmethod
    def _one(text: str, value: str, marked: str, cut: int) -> tuple[str, str]:
        """:meth:`split` of a text that holds one value only, which cannot overlap itself: each occurrence is a run
        of its own (what :func:`_spliced` gives, without sorting occurrences)."""
        out: list[str] = []
        pos = 0
        size = len(value)
        p = text.find(value)
        while p != -1:
            if p + size > cut:  # the held text may still join it: held whole (or from the tail on, if earlier)
                cut = min(cut, p)
                break
            out += (text[pos:p], marked)
            pos = p + size
            p = text.find(value, pos)
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
