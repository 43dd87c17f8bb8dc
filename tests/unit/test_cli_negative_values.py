"""A negative value given to an option as its own word (``--timeout -5m``)."""

from __future__ import annotations

import pytest

from labd.frontends.cli.app import main


@pytest.mark.parametrize(("argv", "says"), [
    (["run", "demo.count", "--timeout", "-5m"], "bad duration '-5m'"),
    (["run", "demo.count", "--memory", "-1G"], "bad size '-1G'"),
    (["ps", "-a", "--since", "-5m"], "bad duration '-5m'"),
    (["wait", "s1", "--timeout", "-5m"], "bad duration '-5m'"),
])
def test_a_negative_value_is_refused_for_what_it_is(argv: list[str], says: str, capsys: pytest.CaptureFixture[str],
                                                    tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """argparse took ``-5m`` for an option and said "expected one argument"; the value now reaches the option's
    own check, whose message says what is wrong with it (as ``--timeout=-5m`` always did). Exit 2 either way."""
    monkeypatch.setenv("LABD_HOME", str(tmp_path))  # no daemon: the values are refused before one is asked
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(argv))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "expected one argument" not in err, err
