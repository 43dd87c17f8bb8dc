"""``labd.ipc.safe_files.open_beneath``: a session's file is opened inside its work directory without following
any symlink, so code in the session cannot get a file outside served (the dashboard's download, MCP resources)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labd.ipc.safe_files import UnsafePath, open_beneath

SECRET = b"SECRET daemon key"
PUBLIC = b"public result"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``work/`` (the root: ``data/out.csv`` in it) next to ``outside/`` (``out.csv`` holding the secret)."""
    (tmp_path / "work" / "data").mkdir(parents=True)
    (tmp_path / "work" / "data" / "out.csv").write_bytes(PUBLIC)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "out.csv").write_bytes(SECRET)
    return tmp_path


def _open_fds(under: Path | None = None) -> int:
    """How many fds this process holds (with ``under``: only those open on a path inside it — a count of every fd
    also sees what another test of the same worker process left to the garbage collector or a library's thread)."""
    if under is None:
        return len(os.listdir("/proc/self/fd"))
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(under))
        except OSError:  # closed meanwhile
            pass
    return count


def test_a_regular_file_is_opened_and_read(tree: Path) -> None:
    """A listed regular file, nested or not, is opened read-only and its bytes are what was written."""
    (tree / "work" / "top.txt").write_bytes(b"top")
    with open_beneath(tree / "work", "data/out.csv") as f:
        assert f.read() == PUBLIC
    with open_beneath(str(tree / "work"), "top.txt") as f:
        assert f.read() == b"top"


def test_a_symlink_as_the_last_component_is_refused(tree: Path) -> None:
    """A symlink named by the path is refused, whether it points outside the root or inside it."""
    (tree / "work" / "key").symlink_to(tree / "outside" / "out.csv")
    (tree / "work" / "alias.csv").symlink_to("data/out.csv")
    for name in ("key", "alias.csv"):
        with pytest.raises(UnsafePath):
            open_beneath(tree / "work", name)


def test_a_symlinked_directory_component_is_refused(tree: Path) -> None:
    """A directory of the path that is a symlink (here to a directory outside holding the secret) is refused."""
    (tree / "work" / "link").symlink_to(tree / "outside", target_is_directory=True)
    with pytest.raises(UnsafePath):
        open_beneath(tree / "work", "link/out.csv")


@pytest.mark.parametrize("relpath", ["../outside/out.csv", "data/../../outside/out.csv", "./data/out.csv",
                                     "data/./out.csv", "/etc/passwd", "", "data//out.csv",
                                     "data/out.csv/", "data/out\0.csv"])
def test_dotdot_absolute_empty_and_nul_are_refused_up_front(tree: Path, relpath: str) -> None:
    """``..``, ``.``, empty components, absolute paths and NUL bytes are refused before anything is opened."""
    with pytest.raises(UnsafePath):
        open_beneath(tree / "work", relpath)


def test_a_fifo_is_refused_without_blocking(tree: Path) -> None:
    """A FIFO (which a plain open would block on until a writer comes) is refused at once as not a regular file."""
    os.mkfifo(tree / "work" / "pipe")
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            open_beneath(tree / "work", "pipe")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout=5)
    assert not t.is_alive(), "open_beneath blocked on a FIFO"
    assert len(outcome) == 1 and isinstance(outcome[0], UnsafePath)


def test_a_directory_is_refused(tree: Path) -> None:
    """A path naming a directory is refused: only regular files are served."""
    with pytest.raises(UnsafePath):
        open_beneath(tree / "work", "data")


def test_a_hard_linked_file_is_refused(tree: Path) -> None:
    """A file with a second hard link (possibly to a file outside the root) is refused: st_nlink must be 1."""
    os.link(tree / "outside" / "out.csv", tree / "work" / "key")
    with pytest.raises(UnsafePath):
        open_beneath(tree / "work", "key")


def test_a_missing_file_is_file_not_found_and_every_refusal_is_an_oserror(tree: Path) -> None:
    """A missing file raises FileNotFoundError (a 404 for callers); UnsafePath is a PermissionError, so one
    ``except OSError`` covers "missing" and "refused" alike."""
    with pytest.raises(FileNotFoundError):
        open_beneath(tree / "work", "data/nope.csv")
    with pytest.raises(FileNotFoundError):
        open_beneath(tree / "work", "nope/out.csv")
    assert issubclass(UnsafePath, PermissionError)


def test_no_fd_is_left_open_on_success_or_refusal(tree: Path) -> None:
    """Every intermediate directory fd is closed, on success and on each kind of refusal."""
    (tree / "work" / "data" / "link").symlink_to(tree / "outside", target_is_directory=True)
    os.mkfifo(tree / "work" / "data" / "pipe")
    before = _open_fds(tree)
    for _ in range(50):
        with open_beneath(tree / "work", "data/out.csv") as f:
            f.read()
        for bad in ("data/link/out.csv", "data/pipe", "data", "data/nope", "data/out.csv/x"):
            with pytest.raises(OSError):
                open_beneath(tree / "work", bad)
    assert _open_fds(tree) == before == 0


def _naive_open(root: Path, relpath: str) -> bytes:
    """The check-then-open the dashboard and MCP server used before: resolve, check containment, open again."""
    target = (root.resolve() / relpath).resolve()
    if not target.is_relative_to(root.resolve()) or not target.is_file():
        raise PermissionError(relpath)
    return target.read_bytes()


def _safe_open(root: Path, relpath: str) -> bytes:
    with open_beneath(root, relpath) as f:
        return f.read()


@pytest.fixture
def swapping(tree: Path) -> Iterator[list[int]]:
    """A thread that keeps swapping ``work/data`` for a symlink to ``outside/`` and back; yields its swap count."""
    work, stop, swaps = tree / "work", threading.Event(), [0]

    def swap() -> None:
        while not stop.is_set():
            os.rename(work / "data", work / "data.real")
            os.symlink(tree / "outside", work / "data")
            os.unlink(work / "data")
            os.rename(work / "data.real", work / "data")
            swaps[0] += 1

    t = threading.Thread(target=swap, daemon=True)
    t.start()
    try:
        yield swaps
    finally:
        stop.set()
        t.join(timeout=10)


def _race(opener: Callable[[Path, str], bytes], root: Path, deadline_s: float, stop_on_secret: bool) -> dict[str, int]:
    """Call ``opener`` on ``data/out.csv`` until the deadline (or the first secret); count what came back."""
    seen = {"public": 0, "secret": 0, "refused": 0}
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            data = opener(root, "data/out.csv")
        except OSError:
            seen["refused"] += 1
            continue
        seen["secret" if data == SECRET else "public"] += 1
        if data == SECRET and stop_on_secret:
            break
    return seen


def test_the_race_test_catches_a_naive_check_then_open(tree: Path, swapping: list[int]) -> None:
    """The swap race below is real: a resolve()-check-then-open implementation serves the secret within the deadline
    (so the next test can fail if open_beneath ever follows a swapped-in symlink)."""
    seen = _race(_naive_open, tree / "work", deadline_s=30, stop_on_secret=True)
    assert seen["secret"] >= 1, f"the naive open never lost the race: {seen}, {swapping[0]} swaps"


def test_open_beneath_never_serves_the_secret_while_a_directory_is_swapped(tree: Path, swapping: list[int]) -> None:
    """While a directory of the path keeps being swapped for a symlink to a directory with a secret file, thousands
    of open_beneath calls return the real file or refuse, never the secret."""
    seen = _race(_safe_open, tree / "work", deadline_s=3, stop_on_secret=False)
    attempts = seen["public"] + seen["refused"] + seen["secret"]
    assert seen["secret"] == 0, seen
    assert attempts >= 2000 and seen["public"] > 0 and seen["refused"] > 0, seen  # the race was exercised
    assert swapping[0] > 100
