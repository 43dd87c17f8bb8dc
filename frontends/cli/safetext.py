"""Session-controlled text made safe for a terminal.

What a session prints, and every name or message it chose (step names, file names, agent messages, approval
prompts, errors, results), is written by code the user did not write. Sent to a terminal as it is, it can act
on the terminal instead of being read: ``ESC ] 52`` writes the user's clipboard, ``ESC ] 0`` retitles the
window, ``ESC [ 2J`` clears the screen so forged lines follow, ``ESC [ 8m`` hides text, DCS / APC strings, C1
controls (``U+009B`` is CSI on some terminals), BEL floods, a carriage return or backspaces overwrite what was
printed before on the same line, bidi overrides (``U+202E``) reorder a file name.

The convention, on a terminal only:

* ``\\n`` and ``\\t`` are kept.
* In a session's own output (:func:`output`), SGR colour sequences, ``ESC [`` digits and ``;`` ``m`` and
  nothing else, are kept: research output uses colours. One that conceals text (parameter 8) is not.
* Every other control character is shown as Python writes it in a string literal: ESC as the four characters
  ``\\x1b``, BEL as ``\\x07``, DEL as ``\\x7f``, the C1 controls U+0080-U+009F as ``\\x80``-``\\x9f``, the bidi
  embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069 as ``\\u202e`` etc. An escape sequence
  thus shows as its text (``\\x1b]52;c;aGk=\\x07``): visible, and inert, since no ESC reaches the terminal.
* A carriage return not followed by a line feed starts a new line in a session's output (a progress bar shows
  each of its updates on a line of its own, as in a log file; nothing printed can be overwritten), and shows as
  ``\\r`` in a name or message (:func:`text`). ``\\r\\n`` is kept.
* :func:`text` (names, messages, prompts, results: everything the CLI prints about a session except its
  output) keeps no escape sequence at all, SGR included; :func:`plain` (``labd top``, which draws the screen
  itself) removes SGR sequences and shows the rest as :func:`text` does.

A backslash the session printed itself is not doubled: ``\\x1b`` on the screen may be those four characters.
The exact bytes are always one pipe away: when stdout (or stderr) is not a terminal, nothing is changed
(``labd logs S > out.txt``, ``labd logs S | less -R`` get exactly what was recorded), and ``labd logs
--raw-control-chars`` writes the output unchanged to a terminal too.

Both are one ``re.sub`` whose replacement runs only for a character that needs it: text without control
characters goes through at regular-expression scanning speed.
"""

from __future__ import annotations

import re

__all__ = ["output", "text", "plain", "one_line"]

_BIDI = "\u202a-\u202e\u2066-\u2069"
#: every control but \t, \n, \r and ESC (handled apart): the rest of C0, DEL, C1, and the bidi controls
_OTHERS = f"\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9f{_BIDI}"

# Each pattern starts with one character class, which the regex engine scans for quickly (an alternation of
# the cases is several times slower on text with no control in it); what follows tells the cases apart.
# Output: ESC not starting an SGR sequence, or starting one with an 8 among its parameters (group 1: the
# parameters; conceal unless that 8 is a colour's index or component); a lone CR; any other control.
_OUTPUT = re.compile(f"[\x1b\r{_OTHERS}](?:(?<=\x1b)(?:(?!\\[[0-9;]*m)|(?=\\[((?:[0-9]*;)*0*8(?:;[0-9;]*)?)m))"
                     f"|(?<=\r)(?!\n)|(?<=[{_OTHERS}]))")
# Text: any ESC, a lone CR, any other control.
_TEXT = re.compile(f"[\x1b\r{_OTHERS}](?:(?<=\r)(?!\n)|(?<!\r))")
_SGR = re.compile("\x1b\\[[0-9;]*m")


def _escape(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")


_SHOWN = {ch: _escape(ch) for ch in map(chr, [*range(0x20), 0x1b, *range(0x7f, 0xa0), *range(0x202a, 0x202f),
                                              *range(0x2066, 0x206a)])}


def _conceals(params: str) -> bool:
    """Does the SGR parameter list ``params`` turn concealment (8) on? ``38;5;8`` is colour 8, not conceal."""
    ps = params.split(";")
    i = 0
    while i < len(ps):
        if ps[i] in ("38", "48", "58") and i + 1 < len(ps) and ps[i + 1] in ("5", "2"):
            i += 3 if ps[i + 1] == "5" else 5  # 38;5;N or 38;2;R;G;B: the numbers after are a colour
            continue
        if ps[i].lstrip("0") == "8":
            return True
        i += 1
    return False


def _output_one(m: re.Match[str]) -> str:
    ch = m.group()
    if m.group(1) is not None:  # an SGR sequence with an 8 in it
        return _SHOWN[ch] if _conceals(m.group(1)) else ch
    return "\n" if ch == "\r" else _SHOWN[ch]


def _text_one(m: re.Match[str]) -> str:
    return _SHOWN[m.group()]


def output(s: str) -> str:
    """A piece of a session's own output (stdout or stderr) for a terminal: colours kept, every other control
    shown as its escape, a lone CR a line break."""
    m = _OUTPUT.search(s)  # most pieces (a line each, in `labd logs`) have nothing to change: a search is cheaper
    if m is None:
        return s
    i = m.start()  # the text before the first match is scanned once only
    return s[:i] + _OUTPUT.sub(_output_one, s[i:])


def text(s: str) -> str:
    """A name, message, prompt or result from a session for a terminal: every control character but ``\\n`` and
    ``\\t`` (and ``\\r\\n``) shown as its escape, colour sequences included."""
    m = _TEXT.search(s)
    if m is None:
        return s
    i = m.start()
    return s[:i] + _TEXT.sub(_text_one, s[i:])


def plain(s: str) -> str:
    """As :func:`text`, with SGR colour sequences removed rather than shown (for ``labd top``'s output pane,
    which draws its own colours)."""
    return _TEXT.sub(_text_one, _SGR.sub("", s))


def one_line(s: str) -> str:
    """A name that must stay on its line (a file's path in a list or an activity line): line breaks and tabs shown as
    ``\\n``, ``\\r``, ``\\t`` wherever it goes (a file named ``"x\\n+ fake.txt"`` printed a line of its own, in a
    pipe too); on a terminal the printer shows the rest as :func:`text` does."""
    return s.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
