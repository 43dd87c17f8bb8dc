"""``labd logs A B``'s line prefixes: each session's label padded to one width in terminal columns."""

from __future__ import annotations

import io

from rich.cells import cell_len

from labd.frontends.cli.activity import Line
from labd.frontends.cli.multilogs import LABEL_WIDTH, Prefixed
from labd.frontends.cli.output import Output


def _printed(labels: dict[str, str]) -> list[str]:
    out = io.StringIO()
    printer = Prefixed(Output(no_color=True, stdout=out, stderr=io.StringIO()), labels)
    for sid in labels:
        printer.write(sid, Line(0.0, "stdout", "hello\n"))
    return out.getvalue().splitlines()


def test_labels_of_wide_characters_line_up_with_the_others() -> None:
    """A CJK name (two columns a character) is padded by its columns, so every session's text starts in the same
    column: padded by its length, it was pushed right by one column per character."""
    lines = _printed({"a": "实验一", "b": "run-b", "c": "r"})
    starts = {cell_len(line[:line.index("| ")]) for line in lines}
    assert len(lines) == 3 and len(starts) == 1, lines
    assert lines[0].startswith("实验一")


def test_a_long_wide_label_is_cut_to_the_width_in_columns() -> None:
    """A name wider than LABEL_WIDTH columns is cut to it (a wide character that would straddle the edge is not
    split), and the others are padded to the same width."""
    lines = _printed({"a": "长" * 40, "b": "x"})
    assert {cell_len(line[:line.index(" | ")]) for line in lines} == {LABEL_WIDTH}, lines


def test_ps_cuts_a_long_name_to_its_column_width_in_columns() -> None:
    """`labd ps` on a terminal fits a name to 28 columns, keeping its start and end around "…": a CJK name (two
    columns a character) was cut at 28 characters, 56 columns, and pushed the table's other columns right."""
    from labd.frontends.cli.listing import fit_name

    assert fit_name("short", 28) == "short"
    ascii_cut = fit_name("lr-sweep-" + "x" * 40 + "-branch-1a2b", 28)
    assert len(ascii_cut) == 28 and ascii_cut.startswith("lr-sweep-") and ascii_cut.endswith("branch-1a2b")
    wide = fit_name("实验" * 20 + "-end", 28)
    assert cell_len(wide) <= 28 and wide.startswith("实验") and wide.endswith("-end") and "…" in wide
