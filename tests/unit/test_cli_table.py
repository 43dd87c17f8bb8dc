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
