"""The agent registry's files (``<home>/agents/*.toml`` and the ``system_prompt_file`` a role names) are read only if
they are regular files of at most ``MAX_ROLE_FILE`` bytes (an attack review, 2026-12-04). The daemon reads the
registry at every session start, on the thread that serves every request: a role whose ``system_prompt_file`` was a
FIFO (or ``/dev/stdin``) hung the whole control plane (``labd status``, ``ps`` and ``stop`` included) until something
wrote to the FIFO, and ``/dev/zero`` grew the daemon without end. Each is now a ``RoleError`` naming the file, which
the daemon answers as ``bad_agents``."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from labd.runner.roles import MAX_ROLE_FILE, RoleError, load_roles

pytestmark = pytest.mark.timeout(30)


def _load_in_thread(agents: Path) -> BaseException | None:
    """load_roles on ``agents`` in a thread; the error it raised, or None. Fails if it does not return in 5 s."""
    out: list[BaseException | None] = []

    def run() -> None:
        try:
            load_roles({}, agents)
            out.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5)
    assert out, "load_roles blocked (it read a FIFO)"
    return out[0]


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "dir", "big"])
def test_a_prompt_file_that_is_no_regular_file_or_too_large_is_refused(tmp_path: Path, target: str) -> None:
    """system_prompt_file naming a FIFO, a device, a directory or a file over MAX_ROLE_FILE bytes: a RoleError naming
    the role and the file, at once; a regular file within the bound is the role's prompt (as before)."""
    agents = tmp_path / "agents"
    agents.mkdir()
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
        target = str(tmp_path / "fifo")
    elif target == "dir":
        target = str(tmp_path)
    elif target == "big":
        (tmp_path / "big.md").write_bytes(b"x" * (MAX_ROLE_FILE + 1))
        target = str(tmp_path / "big.md")
    (agents / "r.toml").write_text(f'system_prompt_file = "{target}"\n')
    err = _load_in_thread(agents)
    assert isinstance(err, RoleError), err
    assert "agent 'r'" in str(err) and target in str(err), err
    (tmp_path / "ok.md").write_bytes(b"p" * MAX_ROLE_FILE)
    (agents / "r.toml").write_text(f'system_prompt_file = "{tmp_path / "ok.md"}"\n')
    assert load_roles({}, agents)["r"].system_prompt == "p" * MAX_ROLE_FILE


def test_a_registry_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    """``<home>/agents/x.toml`` that is a FIFO is a RoleError (cannot read it: not a regular file), not a hang."""
    agents = tmp_path / "agents"
    agents.mkdir()
    os.mkfifo(agents / "x.toml")
    err = _load_in_thread(agents)
    assert isinstance(err, RoleError) and "not a regular file" in str(err), err
