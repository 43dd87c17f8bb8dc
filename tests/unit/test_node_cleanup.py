"""A deleted Ray session's directory on its node (labd.runner.node_cleanup, run there as a pinned Ray task): removed
whole, read-only parts included; nothing else, whatever path a placement names or a session's code planted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labd.runner.node_cleanup import remove_session_dir

SID = "0123456789ab"


def _session(base: Path, sid: str = SID) -> Path:
    work = base / sid / "work"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "f.txt").write_text("x")
    (base / sid / "events.spool").write_bytes(b"\0" * 16)
    return work


def test_the_session_directory_goes_whole_read_only_parts_too(tmp_path: Path) -> None:
    """The work directory's parent (spool and all) is removed, also when the session made a directory read-only;
    asked again, it is ``absent``."""
    work = _session(tmp_path)
    (work / "sub").chmod(0o500)
    assert remove_session_dir(str(work), SID) == "removed"
    assert not (tmp_path / SID).exists() and tmp_path.exists()
    assert remove_session_dir(str(work), SID) == "absent"


@pytest.mark.parametrize("workdir, sid", [
    ("{base}/" + SID + "/work/..", SID),  # not a work directory
    ("{base}/" + SID + "/other", SID),
    ("{base}/ffffffffffff/work", SID),  # another session's
    ("{base}", SID),
    ("relative/" + SID + "/work", SID),
    ("{base}/../x/" + SID + "/work", SID),
    ("{base}/NOTASESSION/work", "NOTASESSION"),
])
def test_a_path_that_is_not_a_sessions_work_directory_removes_nothing(tmp_path: Path, workdir: str, sid: str) -> None:
    """A placement naming anything but ``<dir>/<session>/work`` for that very session is refused, and the tree
    stays."""
    _session(tmp_path)
    with pytest.raises(ValueError):
        remove_session_dir(workdir.format(base=tmp_path), sid)
    assert (tmp_path / SID / "work" / "sub" / "f.txt").exists()


def test_a_symlink_where_the_session_directory_was_is_not_followed(tmp_path: Path) -> None:
    """A session's code that replaced its own directory with a link to something else gets nothing removed there."""
    victim = tmp_path / "victim"
    (victim / "work").mkdir(parents=True)
    (victim / "keep.txt").write_text("keep")
    base = tmp_path / "node"
    base.mkdir()
    os.symlink(victim, base / SID)
    with pytest.raises(ValueError, match="not a directory"):
        remove_session_dir(str(base / SID / "work"), SID)
    assert (victim / "keep.txt").read_text() == "keep"
