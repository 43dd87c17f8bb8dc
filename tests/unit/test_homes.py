"""The per-user registry of labd homes (labd.daemon.homes): every daemon's sessions are kept out of every other
home of the user, except one that holds their own home or the Python installation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from labd.daemon import homes


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry of the test's own (XDG state dir in tmp_path)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def test_each_daemon_sees_every_other_registered_home(tmp_path: Path) -> None:
    """Two homes registered: each one's ``others`` is the other one; a third home, not registered, is nobody's."""
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    for h in (a, b, c):
        h.mkdir()
    homes.register(a)
    homes.register(b)
    assert homes.others(a) == [str(b)] and homes.others(b) == [str(a)]
    assert homes.others(c) == [str(a), str(b)]
    assert homes.registry_path().stat().st_mode & 0o077 == 0  # the user's alone


def test_gone_homes_are_dropped_and_the_registry_is_bounded(tmp_path: Path) -> None:
    """A registered home whose directory is gone is not hidden (nothing to hide) and is dropped at the next
    registration; at most MAX_HOMES are kept, the most recently registered; registering again moves a home last."""
    gone = tmp_path / "gone"
    gone.mkdir()
    homes.register(gone)
    gone.rmdir()
    many = [tmp_path / f"h{i}" for i in range(homes.MAX_HOMES + 5)]
    for h in many:
        h.mkdir()
        homes.register(h)
    homes.register(many[0])
    kept = homes.registry_path().read_text().splitlines()
    assert len(kept) == homes.MAX_HOMES and str(gone) not in kept
    assert kept[-1] == str(many[0]) and str(many[1]) not in kept


def test_a_home_holding_this_home_or_python_is_not_hidden(tmp_path: Path) -> None:
    """A home that is an ancestor of this daemon's home, or holds the Python installation, would hide what the
    session needs: it is left out. A home nested in this one is hidden (it is, with this home, anyway)."""
    outer = tmp_path / "outer"
    inner = outer / "inner"
    nested = inner / "nested"
    nested.mkdir(parents=True)
    for h in (outer, inner, nested):
        homes.register(h)
    assert homes.others(inner) == [str(nested)]
    python_home = Path(sys.prefix).resolve()
    homes.register(python_home)
    assert str(python_home) not in homes.others(inner)
