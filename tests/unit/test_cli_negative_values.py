"""A negative value given to an option as its own word (``--timeout -5m``)."""

from __future__ import annotations

import pytest

from labd.frontends.cli.app import main


@pytest.mark.parametrize(("argv", "says"), [
    (["run", "demo.count", "--timeout", "-5m"], "--timeout: bad duration '-5m'"),
    (["run", "demo.count", "--memory", "-1G"], "--memory: bad size '-1G'"),
    (["run", "demo.count", "--cpus", "-2"], "--cpus: bad CPU count '-2'"),
    (["ps", "-a", "--since", "-5m"], "bad duration '-5m'"),
    (["wait", "s1", "--timeout", "-5m"], "bad duration '-5m'"),
])
def test_a_negative_value_is_refused_for_what_it_is(argv: list[str], says: str, capsys: pytest.CaptureFixture[str],
                                                    tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """argparse took ``-5m`` for an option and said "expected one argument"; the value now reaches the option's
    own check, whose message names the option and says what is wrong with the value (as ``--timeout=-5m`` always
    did). Exit 2 either way."""
    monkeypatch.setenv("LABD_HOME", str(tmp_path))  # no daemon: the values are refused before one is asked
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(argv))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "expected one argument" not in err, err


@pytest.mark.parametrize("budget", ["inf", "nan", "0", "-1"])
def test_a_budget_that_is_no_amount_is_refused_by_its_flag(budget: str, capsys: pytest.CaptureFixture[str],
                                                           tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--budget inf`` was sent, and the daemon's wire check answered about "limits.budget" and JSON's lack of
    Infinity; every budget that is not a positive finite amount is now refused by the flag's own message."""
    monkeypatch.setenv("LABD_HOME", str(tmp_path))
    assert main(["run", "demo.count", "--budget", budget]) == 2
    err = capsys.readouterr().err
    assert "--budget must be a positive amount of USD" in err, err


def test_words_after_a_double_dash_are_left_as_they_are() -> None:
    """``labd search -- --limit -3`` searches for those words: nothing after ``--`` is joined to an option."""
    from labd.frontends.cli.app import _negative_values, build_parser

    parser = build_parser()
    assert _negative_values(parser, ["search", "--", "--limit", "-3"]) == ["search", "--", "--limit", "-3"]
    assert _negative_values(parser, ["search", "x", "--limit", "-3"]) == ["search", "x", "--limit=-3"]


@pytest.mark.parametrize("argv", [
    ["ps", "-a", "--name", "q07", "--name", "q21"],
    ["ps", "-a", "--name=q07", "--name", "q21"],
    ["run", "demo.count", "--memory", "1G", "--memory", "2G"],
    ["ps", "-a", "--na", "q07", "--name", "q21"],
    ["logs", "s1", "--tail=3", "-n4"],
])
def test_an_option_of_one_value_given_twice_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str],
                                                      tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """An option that takes one value, given twice, kept the last value silently (`labd ps --name q07 --name q21`
    listed q21's sessions only: an admin's review); it is now an argument error with the command's usage, exit 2,
    before anything is asked of a daemon. Options that collect (``-p``, ``--tag``) may repeat."""
    monkeypatch.setenv("LABD_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "given 2 times; it takes one value" in err and err.startswith("usage: labd "), err


def test_options_that_collect_may_repeat(capsys: pytest.CaptureFixture[str], tmp_path: object,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--tag`` twice, words after ``--`` that look like a repeated option, and a global option given before and
    after the command (an alias's ``--home`` and an override) are no error of this kind: the command goes on (to
    find no daemon here)."""
    monkeypatch.setenv("LABD_HOME", str(tmp_path))
    assert main(["ps", "-a", "--tag", "a=1", "--tag", "b=2"]) == 2
    assert main(["search", "--", "--name", "--name"]) == 2
    assert main(["--home", str(tmp_path), "ps", "-a", "--home", str(tmp_path)]) == 2  # a global option, both sides
    assert "given 2 times" not in capsys.readouterr().err
