"""The CLI's tables in a pipe: columns line up as a terminal shows them."""

from __future__ import annotations

import io

from rich.cells import cell_len

from labd.frontends.cli.output import Output


def test_wide_characters_keep_the_columns_aligned() -> None:
    """A session name of CJK characters (two terminal columns each) pads its cell by its display width, so the
    columns after it start where they do in every other row; before, `labd ps | cat` shifted that row's
    columns by one column per wide character."""
    buf = io.StringIO()
    Output(stdout=buf).table(["NAME", "STATUS", "COST"], [["日本語テスト名前", "running", "1.00"],
                                                          ["plain", "completed", "12.50"]], right=["COST"])
    lines = buf.getvalue().splitlines()
    starts = {cell_len(line[:line.index(word)]) for line, word in zip(lines, ["STATUS", "running", "completed"],
                                                                         strict=True)}
    assert len(starts) == 1, lines
    assert len({cell_len(line) for line in lines}) == 1, lines  # the right-aligned last column ends in one place


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_wide_table_fits_an_80_column_terminal_cutting_names_not_ids() -> None:
    """`labd ps`'s nine columns on an 80-column terminal: every line fits (before, rows were 103 columns and each
    wrapped: rich shrinks only columns that wrap), the ids and the numbers stay whole, and the long name and
    workflow are cut with an ellipsis; on a wide terminal nothing is cut."""
    import re

    sid = "a1b2c3d4e5f6"
    row = [sid, "sweep-model-gpt4o-lr0.001-seed", "mypkg.flows:a_long_workflow_name", "running", "123456",
           "88.2 MiB", "100%", "$0.0123", "3h"]
    columns = ["ID", "NAME", "WORKFLOW", "STATUS", "PID", "RSS", "CPU", "COST", "AGE"]
    right = ("PID", "RSS", "CPU", "COST", "AGE")
    for width, cut in ((80, True), (100, True), (200, False)):
        buf = _Terminal()
        out = Output(stdout=buf, no_color=True)
        out.console().width = width
        out.table(columns, [row, [*row[:1], "short", *row[2:]]], right=right)
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in buf.getvalue().splitlines()]
        assert all(cell_len(line) <= width for line in lines), (width, lines)
        body = "\n".join(lines)
        assert sid in body and "123456" in body and "$0.0123" in body and "88.2 MiB" in body
        assert ("…" in body) == cut and ("sweep-model-gpt4o-lr0.001-seed" in body) != cut, body
