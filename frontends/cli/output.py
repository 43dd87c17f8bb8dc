"""How the CLI prints: rich tables and colours on a terminal, plain aligned text otherwise, JSON on request.

Colours follow https://no-color.org (``NO_COLOR`` set to anything non-empty) and ``--no-color``; when
stdout is not a terminal the output is plain text with no escape codes at all, so pipes and scripts
see stable columns.

Text a session chose (names, prompts, messages, results, errors quoting them) goes through
:mod:`labd.frontends.cli.safetext` on its way to a terminal: :meth:`Output.line`, :meth:`Output.table`
and :meth:`Output.fields` do it themselves, other printing uses :meth:`Output.safe` (a session's own output:
:class:`labd.frontends.cli.activity.Printer`). To a pipe or a file, text is written as it is.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from labd.frontends.cli import safetext
from labd.ipc.units import format_duration

__all__ = ["Output", "Cell", "styled", "natural_key", "age", "STATUS_STYLE"]

#: a table cell: text, or (text, rich style)
Cell = str | tuple[str, str]

STATUS_STYLE = {
    "created": "cyan", "starting": "cyan", "running": "green", "paused": "yellow",
    "waiting_approval": "bold yellow", "pending": "bold yellow", "completed": "blue", "failed": "bold red",
    "lost": "red", "cancelled": "magenta", "approve": "green", "reject": "red", "expired": "red",
}


def styled(text: str, style: str | None) -> Cell:
    return (text, style) if style else text


def natural_key(value: Any) -> tuple[Any, ...]:
    """Sort key reading digit runs as numbers: ``n2`` before ``n10``, ``n1.10`` after ``n1.9``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", str(value)) if p)


def age(ts: float | None) -> str:
    """How long ago ``ts`` was, short (``42s``, ``5m12s``)."""
    return "-" if not ts else format_duration(time.time() - ts)


def _text(cell: Cell) -> str:
    return cell[0] if isinstance(cell, tuple) else cell


_LINE_BREAKS = str.maketrans({"\n": " ", "\r": " ", "\t": " ", "\v": " ", "\f": " "})


def _safe_cell(cell: Cell) -> Cell:
    """A table cell for a terminal: control characters shown as escapes (:func:`safetext.text`)."""
    if isinstance(cell, tuple):
        return (safetext.text(cell[0]), cell[1])
    return safetext.text(cell)


def counted(n: int, noun: str) -> str:
    """``1 file``, ``2 files``: a count with its noun (regular plurals only)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def short(value: Any, most: int = 100) -> str:
    """``value`` (a string, else its JSON) on one line, whitespace runs as one space, cut to ``most`` characters with
    an ellipsis: a payload's text in a line of `labd logs`, a param or hypothesis in a table cell."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= most else text[: most - 1] + "…"


def _one_line(cell: Cell) -> Cell:
    """A table cell on one line: a line break in a value (an approval's prompt, a name) would break the row."""
    if isinstance(cell, tuple):
        return (cell[0].translate(_LINE_BREAKS), cell[1])
    return cell.translate(_LINE_BREAKS)


#: the narrowest a column that gives way is cut to (``sweep-…`` still tells rows apart)
MIN_CUT = 8


def _fit(longest: Sequence[int], keep: Sequence[bool], width: int) -> list[int | None]:
    """The widths of a table's columns on a terminal ``width`` columns wide: None (as wide as its cells) for each
    when the table fits; else the columns kept whole (``keep``: ids, status, numbers) stay, and the room left is
    shared among the others by their longest cell, none cut below :data:`MIN_CUT` (nor widened). Rich shrinks only
    columns that wrap, so a table of ``no_wrap`` cells overflowed, and every row of ``labd ps`` wrapped on an 80- or
    100-column terminal (power-user review)."""
    gaps = 2 * (len(longest) - 1)  # between two columns: the divider and one space of padding (collapsed)
    if sum(longest) + gaps <= width:
        return [None] * len(longest)
    flex = [i for i, k in enumerate(keep) if not k]
    room = width - gaps - sum(w for w, k in zip(longest, keep, strict=True) if k)
    need = sum(longest[i] for i in flex)
    out: list[int | None] = [None] * len(longest)
    for i in flex:
        share = room * longest[i] // need if need and room > 0 else 0
        out[i] = min(longest[i], max(MIN_CUT, share))
    return out


class Output:
    """Printing for one CLI invocation."""

    def __init__(self, *, no_color: bool = False, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.tty = self.stdout.isatty()
        self.err_tty = self.stderr.isatty()
        self.color = not no_color and not os.environ.get("NO_COLOR")
        #: write a session's own output unchanged to a terminal too (``--raw-control-chars``)
        self.raw_output = False
        self._consoles: dict[bool, Any] = {}

    def console(self, err: bool = False) -> Any:
        """A rich Console on stdout (or stderr); only used when that stream is a terminal."""
        if err not in self._consoles:
            from rich.console import Console

            self._consoles[err] = Console(file=self.stderr if err else self.stdout, force_terminal=True,
                                          no_color=not self.color, highlight=False, emoji=False, soft_wrap=True)
        return self._consoles[err]

    def fancy(self, err: bool = False) -> bool:
        return self.err_tty if err else self.tty

    def safe(self, text: str, *, err: bool = False) -> str:
        """``text`` (which may quote a session's names or messages) as it can be printed on stdout (or stderr):
        control characters shown as escapes when that stream is a terminal (:func:`safetext.text`), unchanged
        otherwise."""
        return safetext.text(text) if self.fancy(err) else text

    # ---- data ------------------------------------------------------------------------------------
    def json(self, data: Any) -> None:
        """One JSON document (indented), the ``--json`` output of every data command."""
        self.stdout.write(json.dumps(data, indent=2, default=str) + "\n")

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Cell]], *, right: Sequence[str] = (),
              title: str | None = None, wrap: Sequence[str] = ()) -> None:
        """Rows under a header; columns named in ``right`` are right-aligned (numbers). On a terminal too
        narrow for the table, cells are cut with an ellipsis, except in the columns named in ``wrap``
        (and never ids, which must stay copyable)."""
        from rich.cells import cell_len  # columns a text takes in a terminal: a CJK character takes two

        rows = [[_one_line(c) for c in r] for r in rows]
        if self.tty:
            from rich.box import SIMPLE_HEAD
            from rich.table import Table
            from rich.text import Text

            rows = [[_safe_cell(c) for c in r] for r in rows]
            t = Table(box=SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, header_style="bold",
                      title=Text(safetext.text(title)) if title is not None else None,  # a Text: no markup read
                      title_justify="left", title_style="bold")
            longest = [max([cell_len(_text(r[i])) for r in rows] + [cell_len(c)]) for i, c in enumerate(columns)]
            keep = [c in ("ID", "SESSION", "APPROVAL", "NODE", "STATUS") or c in right for c in columns]
            widths = _fit(longest, keep, self.console().width)
            for i, c in enumerate(columns):
                t.add_column(c, justify="right" if c in right else "left", no_wrap=c not in wrap,
                             overflow="fold" if c in wrap else "ellipsis", width=widths[i],
                             min_width=longest[i] if keep[i] else None)
            for r in rows:
                t.add_row(*[Text(c[0], style=c[1]) if isinstance(c, tuple) else Text(c) for c in r])
            self.console().print(t)
            return
        if title:
            self.stdout.write(title + "\n")
        texts = [[_text(c) for c in r] for r in rows]
        plain = [max(cell_len(x) for x in col) for col in zip(columns, *texts, strict=False)]
        for line in [list(columns), *texts]:
            pads = [" " * (w - cell_len(v)) for v, w in zip(line, plain, strict=True)]
            cells = [pad + v if c in right else v + pad for v, pad, c in zip(line, pads, columns, strict=True)]
            self.stdout.write("  ".join(cells).rstrip() + "\n")

    def fields(self, pairs: Sequence[tuple[str, Cell]]) -> None:
        """``label   value`` lines, labels aligned (the human form of ``show`` and ``status``)."""
        width = max((len(k) for k, _ in pairs), default=0)
        for k, v in pairs:
            if self.tty and isinstance(v, tuple):
                from rich.text import Text

                line = Text(f"{k:<{width}}  ", style="bold")
                line.append(safetext.text(v[0]), style=v[1])
                self.console().print(line)
            elif self.tty:
                from rich.text import Text

                line = Text(f"{k:<{width}}  ", style="bold")
                line.append(safetext.text(_text(v)))
                self.console().print(line)
            else:
                self.stdout.write(f"{k:<{width}}  {_text(v)}".rstrip() + "\n")

    # ---- text ------------------------------------------------------------------------------------
    def line(self, text: str, style: str | None = None, *, err: bool = False) -> None:
        """One line on stdout (or stderr), in ``style`` when that stream is a terminal (where control characters
        in ``text`` are shown as escapes: see :meth:`safe`)."""
        text = self.safe(text, err=err)
        if style and self.fancy(err):
            from rich.text import Text

            self.console(err).print(Text(text, style=style))
        else:
            (self.stderr if err else self.stdout).write(text + "\n")
        (self.stderr if err else self.stdout).flush()

