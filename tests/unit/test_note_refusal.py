"""The note a confined runner adds to a PermissionError its confinement explains (runner/credentials.py,
``note_refusal``), and only to those (a review: it raised when the cwd was gone, noted twice, and blamed labd for
plain Unix permissions and for runners that were not confined)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from labd.runner import credentials


def _refused(path: Path | str) -> PermissionError:
    return PermissionError(errno.EACCES, "Permission denied", str(path))


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(the directory holding a labd home, a session's work directory in that home)."""
    work = tmp_path / "home" / "sessions" / "abc" / "work"
    work.mkdir(parents=True)
    return tmp_path, work


def test_a_new_file_beside_the_home_is_noted_once_and_only_when_confined(layout: tuple[Path, Path],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Confined: a new file directly in the directory holding the home gets one note naming that directory and the
    work directory, however often the error passes (a submitted function's error is noted on its way out too).
    Not confined: no note (the refusal is not labd's)."""
    above, work = layout
    monkeypatch.setattr(credentials, "_confined", True)
    exc = _refused(above / "new.txt")
    credentials.note_refusal(exc, work)
    credentials.note_refusal(exc, work)
    assert len(exc.__notes__) == 1 and str(above) in exc.__notes__[0] and str(work) in exc.__notes__[0]
    key = _refused(above / "home" / "daemon.key")  # the home itself, outside the session's directory
    credentials.note_refusal(key, work)
    assert len(key.__notes__) == 1 and "out of a session's reach" in key.__notes__[0]
    monkeypatch.setattr(credentials, "_confined", False)
    plain = _refused(above / "new.txt")
    credentials.note_refusal(plain, work)
    assert not getattr(plain, "__notes__", None)


def test_what_the_confinement_does_not_explain_gets_no_note(layout: tuple[Path, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No note for: a file in the session's own directory; an existing file (the rule is about new entries); a
    directory the user could not write anyway (Unix permissions, not labd); a path elsewhere."""
    above, work = layout
    monkeypatch.setattr(credentials, "_confined", True)
    (above / "exists.txt").write_text("x")
    locked = above / "home" / "sessions" / "abc" / "x.txt"
    cases = [work / "mine.txt", locked, above / "exists.txt", Path("/elsewhere/new.txt")]
    for path in cases:
        exc = _refused(path)
        credentials.note_refusal(exc, work)
        assert not getattr(exc, "__notes__", None), path
    monkeypatch.setattr(os, "access", lambda *_a, **_k: False)  # a directory the user may not write
    exc = _refused(above / "new.txt")
    credentials.note_refusal(exc, work)
    assert not getattr(exc, "__notes__", None)


def test_a_relative_name_with_the_cwd_gone_is_left_alone(layout: tuple[Path, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative file name while the process's cwd was removed: ``abspath`` cannot resolve it; the note is left out
    and nothing is raised (it raised FileNotFoundError out of the runner's last-chance handler)."""
    _above, work = layout
    monkeypatch.setattr(credentials, "_confined", True)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    exc = _refused("relative.txt")
    credentials.note_refusal(exc, work)
    assert not getattr(exc, "__notes__", None)
