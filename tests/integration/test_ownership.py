"""Runtime directory ownership: daemon and clients refuse a runtime directory or connection file that another
local user could have made or written (issue 8, item 7)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import running_daemon


def _labd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labd", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def other_user() -> Iterator[tuple[int, int]]:
    """A throwaway local user (uid, gid), created for the test and removed after; root only."""
    if os.geteuid() != 0:
        reason = "needs root to create a second local user (useradd) and chown files to it"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    name = f"labdt{secrets.token_hex(3)}"
    r = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       capture_output=True, text=True)
    if r.returncode != 0:
        reason = f"useradd failed: {r.stderr.strip()}"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    import pwd

    entry = pwd.getpwnam(name)
    try:
        yield entry.pw_uid, entry.pw_gid
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def shared_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No XDG runtime dir and a TMPDIR standing for a shared /tmp: labd falls back to <TMPDIR>/labd-<uid>."""
    tmp = Path(tempfile.mkdtemp(prefix="lt", dir="/tmp"))
    os.chmod(tmp, 0o1777)  # like /tmp: everybody may create entries
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # recompute from TMPDIR in this process too
    yield tmp
    subprocess.run(["rm", "-rf", str(tmp)], check=False)


def _chain(home: Path) -> list[Path]:
    from labd.ipc.paths import layout_for

    rt = layout_for(home).runtime_dir
    return [rt.parent.parent, rt.parent, rt]


@pytest.mark.parametrize("level", [0, 1, 2], ids=["labd-uid", "labd", "per-home"])
def test_runtime_dir_precreated_by_another_user_is_refused(isolated_env: Path, shared_tmp: Path,
                                                           other_user: tuple[int, int], level: int) -> None:
    """Another user pre-creates (world-writable) one of the runtime directories labd would use under a shared
    TMPDIR: `labd serve` refuses with a clear error naming the directory and its owner, binds no socket there,
    and a client refuses it too."""
    chain = _chain(isolated_env)
    assert chain[0].parent == shared_tmp
    for d in chain[:level]:
        d.mkdir(mode=0o700)
    foreign = chain[level]
    foreign.mkdir(mode=0o777)
    os.chmod(foreign, 0o777)
    os.chown(foreign, *other_user)
    isolated_env.mkdir(parents=True, exist_ok=True)
    r = _labd("serve")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"refusing runtime directory {foreign}" in r.stderr and f"uid {other_user[0]}" in r.stderr, r.stderr
    assert not list(foreign.rglob("*.sock")), "the daemon bound sockets in a directory it does not own"
    r = _labd("ps")
    assert r.returncode == 2 and "refusing" in r.stderr and "[unsafe_runtime_dir]" in r.stderr, r.stderr


def test_runtime_dir_with_loose_mode_or_symlink_is_refused(isolated_env: Path, shared_tmp: Path) -> None:
    """A runtime directory of our own that others can enter (0755), or a symlink in its place, is refused
    rather than silently fixed: something may already have been put in it."""
    chain = _chain(isolated_env)
    chain[0].mkdir(mode=0o700)
    chain[1].mkdir(mode=0o755)
    os.chmod(chain[1], 0o755)
    isolated_env.mkdir(parents=True, exist_ok=True)
    r = _labd("serve")
    assert r.returncode == 2 and "mode 0755" in r.stderr and str(chain[1]) in r.stderr, r.stderr
    chain[1].rmdir()
    elsewhere = Path(tempfile.mkdtemp(dir=shared_tmp))
    chain[1].symlink_to(elsewhere)
    r = _labd("serve")
    assert r.returncode == 2 and "not a directory" in r.stderr, r.stderr


def test_connection_file_must_be_private_and_ours(isolated_env: Path) -> None:
    """A client never trusts a connection file that others can read or that is a symlink: it refuses with
    `unsafe_runtime_dir`, and works again once the file is private."""
    from labd.ipc.paths import layout_for

    path = layout_for(isolated_env).connection_file
    with running_daemon(isolated_env):
        os.chmod(path, 0o644)
        r = _labd("ps")
        assert r.returncode == 2 and "mode 0600, found 0644" in r.stderr and "[unsafe_runtime_dir]" in r.stderr
        os.chmod(path, 0o600)
        assert _labd("ps").returncode == 0
        real = path.with_name("real.json")
        path.rename(real)
        path.symlink_to(real)
        r = _labd("ps")
        assert r.returncode == 2 and "symlink" in r.stderr, r.stderr
        path.unlink()
        real.rename(path)
        assert _labd("ps").returncode == 0


def test_connection_file_owned_by_another_user_is_refused(isolated_env: Path, other_user: tuple[int, int]) -> None:
    """A connection file that belongs to another user (who could have written endpoints of their own into it)
    is refused by clients, even with mode 0600."""
    from labd.ipc.paths import layout_for

    path = layout_for(isolated_env).connection_file
    with running_daemon(isolated_env):
        info = json.loads(path.read_text())
        os.chown(path, *other_user)
        r = _labd("ps")
        assert r.returncode == 2 and f"found uid {other_user[0]}" in r.stderr, r.stderr
        os.chown(path, os.getuid(), os.getgid())
        assert json.loads(path.read_text()) == info
        assert _labd("ps").returncode == 0


@pytest.mark.parametrize("detach", [False, True], ids=["serve", "serve-detach"])
def test_a_home_made_by_another_user_is_refused(isolated_env: Path, other_user: tuple[int, int], detach: bool) -> None:
    """Another user made the home first (world-writable, as in a shared /tmp): `labd serve` (and `serve --detach`)
    refuses it in one line naming its owner, and writes nothing in it. Before, a daemon run as root took it: the
    other user, its owner, could read the search index and the log (full text of the sessions) and replace files."""
    isolated_env.mkdir(mode=0o777)
    os.chmod(isolated_env, 0o777)
    os.chown(isolated_env, *other_user)
    r = _labd("serve", *(["--detach"] if detach else []))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert f"cannot use {isolated_env} as labd's home: it belongs to uid {other_user[0]}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert list(isolated_env.iterdir()) == []
