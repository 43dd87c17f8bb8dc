"""Reading a connection file given with ``--connect``: what is wrong with it is said in terms of that file."""

from __future__ import annotations

from pathlib import Path

import pytest

from labd.ipc.connection import ConnectionFileError, read_connection_file
from labd.ipc.paths import layout_for


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conn.json"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_a_missing_connection_file_is_named_without_blaming_the_local_home(tmp_path: Path) -> None:
    """`labd --connect FILE` with no such FILE says so and how one is made, not "no daemon for home ...; start one
    with labd serve" (the user asked for a remote daemon, not the local one)."""
    with pytest.raises(ConnectionFileError) as exc:
        read_connection_file(layout_for(str(tmp_path / "home")), tmp_path / "nope.json")
    assert str(exc.value) == (f"no connection file {tmp_path / 'nope.json'} (write one with `labd remote add NAME` "
                              "on the daemon's machine)")


@pytest.mark.parametrize("text, why", [
    ("{}", "it lacks control, events, runners, key, pid, home"),
    ('{"control": "tcp://h:1", "events": "tcp://h:2", "runners": "", "key": "k"}', "it lacks pid, home"),
    ("[1, 2]", "not a labd connection file"),
    ("not json", "not a labd connection file"),
])
def test_a_malformed_connection_file_says_what_is_wrong_in_its_terms(tmp_path: Path, text: str, why: str) -> None:
    """A file that is not a connection file gets one line naming the missing fields (or saying it is not one), not
    Python's "ConnectionInfo.__init__() missing 6 required positional arguments"."""
    path = _file(tmp_path, text)
    with pytest.raises(ConnectionFileError) as exc:
        read_connection_file(layout_for(str(tmp_path / "home")), path)
    assert str(exc.value).startswith(f"cannot read connection file {path}: {why}")
    assert "__init__" not in str(exc.value)
