"""A spool file prepared ahead of its session (runner/spool.py ``prepare_unnamed``, used by a spare runner):
unnamed until a session names it, then an ordinary spool; never over an existing one."""

from __future__ import annotations

import os
from pathlib import Path

from labd.runner.spool import Spool, prepare_unnamed, read_spool


def test_a_prepared_spool_has_no_name_until_linked_then_keeps_what_is_appended(tmp_path: Path) -> None:
    """Preparing leaves no entry in the directory; once linked, appended records are read back from the path
    by the daemon's reader, and closing with ``remove`` deletes it."""
    prepared = prepare_unnamed(tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "s1").mkdir()
    spool = Spool.link_prepared(prepared, tmp_path / "s1" / "events.spool")
    assert spool is not None
    spool.append(1, b'[1,0.0,"output",null,null,{"text":"a"}]')
    spool.append(2, b'[2,0.0,"output",null,null,{"text":"b"}]')
    assert [seq for seq, _ in read_spool(tmp_path / "s1" / "events.spool")] == [1, 2]
    spool.close(remove=True)
    assert not (tmp_path / "s1" / "events.spool").exists()


def test_a_prepared_spool_never_replaces_an_existing_one(tmp_path: Path) -> None:
    """An existing spool (a resumed session's predecessor left events in it) is kept: the prepared file is
    released (its descriptor closed) and the caller opens the existing spool, whose records stay."""
    path = tmp_path / "events.spool"
    old = Spool(path)
    old.append(1, b'[1,0.0,"log",null,null,{}]')
    old.close()
    fd, m = prepared = prepare_unnamed(tmp_path)
    assert Spool.link_prepared(prepared, path) is None
    assert m.closed
    try:
        os.fstat(fd)
        raise AssertionError("the prepared file's descriptor is still open")
    except OSError:
        pass
    assert [seq for seq, _ in read_spool(path)] == [1]
