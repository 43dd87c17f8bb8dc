"""`labd cost`: options that only one of its two forms reads are refused with the other, not silently ignored."""

from __future__ import annotations

import pytest

from labd.frontends.cli.app import main

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(("argv", "said"), [
    (["cost", "abc1", "--all"], "cost takes a SESSION or --all, not both"),
    (["cost", "abc1", "--since", "1h"], "--by and --since go with --all"),
    (["cost", "abc1", "--by", "workflow"], "--by and --since go with --all"),
])
def test_cost_options_of_the_other_form_are_refused(argv: list[str], said: str, tmp_path, capsys) -> None:
    """``labd cost SESSION --all`` printed every session's cost and dropped SESSION; ``labd cost SESSION --since 1h``
    or ``--by workflow`` printed the session's whole cost as if the option were honoured. Each is now a one-line
    error (exit 2) before any daemon is asked."""
    assert main(["--home", str(tmp_path / "nohome"), *argv]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
