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


GOOD = {"control": "tcp://127.0.0.1:5000", "events": "tcp://127.0.0.1:5001", "runners": "",
        "key": "00112233445566778899aabbccddeeff", "pid": 1, "home": "/h"}
CURVE = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"  # a Z85 key (the ZeroMQ RFC's example)


@pytest.mark.parametrize("change, why", [
    ({"control": 5}, "field 'control' must be a string, not int"),
    ({"key": "zz"}, "field 'key' must be hex digits"),
    ({"key": "00ff"}, "field 'key' must be at least 16 bytes (32 hex digits)"),
    ({"pid": "x"}, "field 'pid' must be an integer, not 'x'"),
    ({"pid": True}, "field 'pid' must be an integer, not True"),
    ({"max_message": "big"}, "field 'max_message' must be an integer, not 'big'"),
    ({"started": "now"}, "field 'started' must be a number, not 'now'"),
    ({"control": "nonsense"}, "field 'control' must be an ipc:// or tcp:// endpoint, not 'nonsense'"),
    ({"server_public": "abc"}, "field 'server_public' must be a CurveZMQ key: 40 characters of Z85 text"),
    ({"server_public": CURVE, "client_secret": "~" * 40}, "field 'client_secret' must be a CurveZMQ key"),
])
def test_a_connection_file_with_a_field_no_client_can_use_is_refused_naming_it(tmp_path: Path, change: dict,
                                                                                why: str) -> None:
    """A connection file edited or damaged by hand (a field of the wrong type, a key that is not hex of 16 bytes or
    more, a CurveZMQ key that is not 40 characters of Z85, an endpoint that is not ipc:// or tcp://) is refused as
    BadConnectionFile naming the field; before, it was read, and the client failed later with a Python ValueError,
    TypeError or ZMQError traceback (`signing key must be at least 16 bytes`, `non-hexadecimal number`)."""
    import json

    path = _file(tmp_path, json.dumps({**GOOD, **change}))
    with pytest.raises(ConnectionFileError) as exc:
        read_connection_file(layout_for(str(tmp_path / "home")), path)
    assert type(exc.value).__name__ == "BadConnectionFile"  # the SDK's LabdError bad_connection_file
    assert str(exc.value).startswith(f"cannot read connection file {path}: {why}")


def test_a_good_connection_file_is_read(tmp_path: Path) -> None:
    """What a daemon writes (and `labd remote add`, with CurveZMQ keys) reads back as it is."""
    import json

    data = {**GOOD, "started": 1.5, "start_ticks": 7, "max_message": 1 << 20, "events_auth": "plain",
            "server_public": CURVE, "client_public": CURVE, "client_secret": CURVE, "events_public": None}
    info = read_connection_file(layout_for(str(tmp_path / "home")), _file(tmp_path, json.dumps(data)))
    assert (info.control, info.key, info.server_public, info.max_message) == (GOOD["control"], GOOD["key"], CURVE,
                                                                              1 << 20)


@pytest.mark.timeout(30)
def test_a_connection_file_that_is_a_fifo_huge_or_nested_too_deep_is_refused_at_once(tmp_path: Path) -> None:
    """``--connect FILE`` (or ``LABD_CONNECTION_FILE``) naming a FIFO is refused at once like any file that is not a
    regular file of our own: the open waited for a writer for good, so `labd ps` hung. A file of 60,000 ``[`` is
    "not a labd connection file" (it was a RecursionError traceback); one over 64 KiB is refused without being read
    whole (a 300 MB file made `labd ps` read all of it, 600 MB of memory, to say it lacked fields)."""
    import os

    layout = layout_for(str(tmp_path / "home"))
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConnectionFileError) as exc:
        read_connection_file(layout, fifo)
    assert str(exc.value).startswith(f"refusing {fifo}: it must be a file of your own")
    deep = _file(tmp_path, "[" * 60_000)
    with pytest.raises(ConnectionFileError) as exc:
        read_connection_file(layout, deep)
    assert str(exc.value) == f"cannot read connection file {deep}: not a labd connection file (a JSON object with " \
                             "control, events, key, ...)"
    big = _file(tmp_path, '{"pad": "' + "x" * 100_000 + '"}')
    with pytest.raises(ConnectionFileError) as exc:
        read_connection_file(layout, big)
    assert str(exc.value) == f"cannot read connection file {big}: larger than 65,536 bytes, so not a labd connection " \
                             "file"
