"""labd.frontends.cli.safetext: session-controlled text made safe for a terminal (escape sequences shown as text,
colours kept in output, nothing else that acts on the terminal), and fast enough for large outputs."""

from __future__ import annotations

import io
import re
import time

import pytest

from labd.frontends.cli import safetext
from labd.frontends.cli.activity import Line, Printer
from labd.frontends.cli.output import Output

#: what may act on a terminal after safetext.output: SGR only, and no other control but \n and \t
UNSAFE = re.compile("\x1b(?!\\[[0-9;]*m)|[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

HOSTILE = {
    "clipboard (OSC 52)": "\x1b]52;c;aGFja2Vk\x07",
    "title (OSC 0, ST)": "\x1b]0;pwned\x1b\\",
    "clear and home": "\x1b[2J\x1b[H",
    "cursor up, erase line": "\x1b[1A\x1b[2K",
    "DCS": "\x1bP1$qm\x1b\\",
    "APC": "\x1b_payload\x1b\\",
    "C1 CSI": "\x9b2J",
    "C1 OSC": "\x9d0;title\x9c",
    "BEL": "\x07\x07\x07",
    "backspaces": "secret\x08\x08\x08\x08\x08\x08",
    "DEL": "\x7f",
    "NUL": "\x00",
    "bidi override": "gnp\u202eexe.txt",
    "bidi isolate": "\u2066x\u2069",
    "private mode (alt screen)": "\x1b[?1049h",
    "SGR with colons": "\x1b[38:2:255:0:0m",
    "keypad (ESC =)": "\x1b=",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_every_hostile_sequence_is_shown_not_obeyed(name: str) -> None:
    """Each sequence that acts on a terminal comes out of output(), text() and plain() with no control character
    left that could act (ESC, C0 but \\n \\t, DEL, C1, bidi), each shown as its Python escape (ESC as the four
    characters \\x1b), so the text is still there to read."""
    s = f"before {HOSTILE[name]} after"
    for fn in (safetext.output, safetext.text, safetext.plain):
        out = fn(s)
        assert not UNSAFE.search(out), (fn.__name__, out)
        assert out.startswith("before ") and out.endswith(" after")
        assert "\\x" in out or "\\u" in out or fn is safetext.plain  # shown (plain drops colour sequences)


def test_the_escape_convention() -> None:
    """The convention the module documents: Python string-literal escapes, the rest of the sequence as text."""
    assert safetext.output("\x1b]52;c;aGk=\x07") == "\\x1b]52;c;aGk=\\x07"
    assert safetext.text("\x9b2J\x7f\x00") == "\\x9b2J\\x7f\\x00"
    assert safetext.text("a\u202eb\u2067c") == "a\\u202eb\\u2067c"
    assert safetext.text("tab\tand\nline") == "tab\tand\nline"


def test_output_keeps_colours_but_not_concealment() -> None:
    """SGR colour sequences (ESC [ digits ; m) pass through output() untouched; one that turns on concealment (8,
    also as 08 or among others) is shown as text, while 8 as a 256-colour index or an RGB component is a colour."""
    coloured = "\x1b[1;31mred\x1b[0m \x1b[38;5;8mgrey\x1b[m \x1b[48;2;8;8;8mbg\x1b[0m \x1b[38;5;208mx"
    assert safetext.output(coloured) == coloured
    for conceal in ("\x1b[8m", "\x1b[08m", "\x1b[1;8m", "\x1b[8;31m", "\x1b[38;5;1;8m"):
        assert safetext.output(f"{conceal}hidden\x1b[0m") == "\\x1b" + conceal[1:] + "hidden\x1b[0m", conceal


def test_text_and_plain_keep_no_sequence_at_all() -> None:
    """Names and messages (text) show colour sequences as text too; top's plain() drops them."""
    assert safetext.text("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert safetext.plain("\x1b[31mred\x1b[0m \x1b[8mx\x1b]0;t\x07") == "red x\\x1b]0;t\\x07"


def test_a_lone_carriage_return_cannot_overwrite() -> None:
    """In output a CR not followed by LF starts a new line (a progress bar shows every update; text printed
    before a CR stays visible); in a name it is shown as \\r; CR LF is kept in both."""
    assert safetext.output("rm -rf ~\rls -l\n") == "rm -rf ~\nls -l\n"
    assert safetext.output(" 10%\r 20%\r100%\n") == " 10%\n 20%\n100%\n"
    assert safetext.output("dos\r\n") == "dos\r\n"
    assert safetext.text("a\rb\r\n") == "a\\rb\r\n"


def test_plain_text_is_returned_as_it_is() -> None:
    """Text with nothing to escape comes back equal, unicode included."""
    s = "résumé ✓ 数据 0.93 ± 0.01\n\tnext"
    assert safetext.output(s) == s and safetext.text(s) == s and safetext.plain(s) == s


def test_fast_enough_for_large_outputs() -> None:
    """50 MB of ordinary output (coloured here and there) goes through output() in well under the time a
    per-character Python loop takes (that is ~10 s; this is ~1 s)."""
    chunk = ("epoch 1 loss 0.1234 acc 0.98 " * 2 + "\x1b[32mok\x1b[0m\n") * 1000
    big = chunk * (50 * 2**20 // len(chunk))
    t0 = time.perf_counter()
    out = safetext.output(big)
    took = time.perf_counter() - t0
    assert out == big
    assert took < 6, f"{took:.2f}s for {len(big) / 2**20:.0f} MB"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_printer_makes_output_safe_only_on_a_terminal() -> None:
    """The Printer of `labd logs` writes a session's output made safe to a terminal (a CR split from its LF
    across two pieces still makes one line break; colours left on are reset before an activity line and at the
    end), and exactly as recorded to a pipe or with raw_output."""
    pieces = ["\x1b[31mred ", "\x1b]52;c;aGk=\x07 progress\r", "\n", "next\n"]
    tty, err = _Tty(), _Tty()
    p = Printer(Output(stdout=tty, stderr=err))
    for text in pieces:
        p.write(Line(0.0, "stdout", text))
    p.write(Line(0.0, "note", "a note \x1b]0;x\x07"))
    p.close()
    assert tty.getvalue() == "\x1b[31mred \\x1b]52;c;aGk=\\x07 progress\nnext\n\x1b[0m"
    assert "\\x1b]0;x\\x07" in err.getvalue() and "\x07" not in err.getvalue()
    piped, raw = io.StringIO(), _Tty()
    for stdout in (piped, raw):
        out = Output(stdout=stdout, stderr=io.StringIO())
        out.raw_output = stdout is raw  # --raw-control-chars
        p = Printer(out)
        for text in pieces:
            p.write(Line(0.0, "stdout", text))
        p.close()
        assert stdout.getvalue() == "".join(pieces)
