"""Removing a deleted session's directory (``daemon/retention.remove_tree``) as the user the daemon runs as.

A session's code may leave read-only directories behind (Go's module cache, ``chmod -R a-w results``).
``shutil.rmtree`` cannot empty those unless it runs as root, and ``labd rm`` used to leave such a directory on
disk without a word. These tests therefore run the removal as an unprivileged user: in a child process that
drops to ``nobody`` when the tests run as root (as the daemon's own process when they do not).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

NOBODY = 65534

def _as_user(top: Path) -> dict[str, object]:
    """``remove_tree(top)`` in a forked child, as ``nobody`` when this process is root: what it left, and
    whether ``top`` still exists."""
    from labd.daemon.retention import remove_tree

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the unprivileged user, remove, report, and end without pytest's exit path
        code = 1
        try:
            os.close(r)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            left = remove_tree(top)
            os.write(w, json.dumps({"left": left, "exists": os.path.lexists(top)}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


def _chown_tree(top: Path) -> None:
    """Make ``top`` and what is below it the unprivileged user's, as a session's own files are."""
    if os.geteuid() != 0:
        return
    for root, dirs, files in os.walk(top):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.lchown(name, NOBODY, NOBODY)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A directory the unprivileged user can reach and write in."""
    os.chmod(tmp_path, 0o777)
    for parent in tmp_path.parents:  # pytest's own temporary directories are 0700
        if parent == Path("/") or os.stat(parent).st_mode & 0o001:
            continue
        if os.geteuid() == 0 and str(parent).startswith(("/tmp", "/var/tmp")):
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
    return tmp_path


def test_read_only_directories_a_session_left_are_removed(base: Path) -> None:
    """A work directory holding read-only directories (0555 with files in them, a 0000 one, read-only files) is
    removed entirely, not left on disk with nothing said."""
    top = base / "sess"
    (top / "work" / "pkg" / "mod@v1" / "sub").mkdir(parents=True)
    (top / "work" / "pkg" / "mod@v1" / "sub" / "a.go").write_text("package a\n")
    (top / "work" / "results").mkdir()
    (top / "work" / "results" / "table.csv").write_text("1,2\n")
    (top / "work" / "locked").mkdir()
    (top / "work" / "locked" / "x").write_text("x")
    _chown_tree(top)
    for d in (top / "work" / "pkg" / "mod@v1" / "sub", top / "work" / "pkg" / "mod@v1", top / "work" / "results"):
        os.chmod(d, 0o555)
    os.chmod(top / "work" / "results" / "table.csv", 0o444)
    os.chmod(top / "work" / "locked", 0o000)
    got = _as_user(top)
    assert got == {"left": [], "exists": False}


def test_a_symbolic_link_in_the_tree_is_not_followed(base: Path) -> None:
    """A link a session planted to a read-only directory elsewhere is removed as a link: the directory it
    points to keeps its files and its mode."""
    outside = base / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    top = base / "sess"
    (top / "ro").mkdir(parents=True)
    (top / "ro" / "link").symlink_to(outside)
    _chown_tree(top)
    _chown_tree(outside)
    os.chmod(outside, 0o555)
    os.chmod(top / "ro", 0o555)
    got = _as_user(top)
    assert got == {"left": [], "exists": False}
    assert (outside / "keep").read_text() == "mine"
    assert os.stat(outside).st_mode & 0o777 == 0o555


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a directory of another owner, which only root can make here")
def test_what_cannot_be_removed_is_named(base: Path) -> None:
    """A directory of another owner inside the tree cannot be emptied: the removal says which path is left and
    why, so that the daemon can log it, instead of ignoring the error."""
    top = base / "sess"
    theirs = top / "theirs"
    theirs.mkdir(parents=True)
    (theirs / "f").write_text("root's")
    os.lchown(top, NOBODY, NOBODY)
    os.chmod(theirs, 0o755)  # root's: nobody can neither empty nor chmod it
    got = _as_user(top)
    assert got["exists"] is True
    left = got["left"]
    assert isinstance(left, list) and any(str(theirs / "f") in item and "Permission denied" in item for item in left)
