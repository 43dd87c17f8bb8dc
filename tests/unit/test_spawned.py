"""runner/spawned.py's seams, in process: which new processes get the relay's descriptor, what the preparation data
carries, and that a child takes only a descriptor that is the relay's kind of socket (an inherited number can name
anything) and leaves it to nothing it ``exec``s."""

from __future__ import annotations

import multiprocessing.spawn as mp_spawn
import multiprocessing.util as mp_util
import os
import socket
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from labd.runner import forksafe, spawned


@pytest.fixture()
def installed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """``install`` on this process, with ``spawnv_passfds`` recording instead of starting anything (both
    functions are put back afterwards)."""
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(mp_util, "spawnv_passfds", lambda path, args, fds: calls.append((args, tuple(fds))) or 0)
    monkeypatch.setattr(mp_spawn, "get_preparation_data", mp_spawn.get_preparation_data)
    setup = spawned.setup_of("s1", Path("/tmp/w"), {"params": {"a": 1}, "models": {"m": {}}}, {"K": "v"})
    forked = SimpleNamespace(_node_prefix="f3.")  # the context of a child the runner forked
    spawned.install(lambda: 99, 1000, Path("/tmp"), setup, lambda: "n7", lambda: forksafe.child_prefix(forked))
    return calls


def test_only_spawned_workers_and_the_forkserver_get_the_relay(installed: list[tuple[Any, ...]]) -> None:
    """A spawned worker's and the forkserver's ``exec`` pass the relay's descriptor on; the resource tracker's does
    not (it lives as long as the runner, and would hold the relay open at the session's end)."""
    mp_util.spawnv_passfds("py", ["py", "-c", "from multiprocessing.spawn import spawn_main; spawn_main(pipe_handle=7)",
                                  "--multiprocessing-fork"], [7])
    mp_util.spawnv_passfds("py", ["py", "-c", "from multiprocessing.forkserver import main; main(5, 6, None)"], [5])
    mp_util.spawnv_passfds("py", ["py", "-c", "from multiprocessing.resource_tracker import main;main(4)"], [4])
    assert [fds for _args, fds in installed] == [(7, 99), (5, 99), (4,)]


def test_the_preparation_data_carries_the_setup_and_a_node_prefix_per_child(installed: list[Any]) -> None:
    """Each new process's preparation data names the relay, the spawning step, the session's setup (its secrets
    included: this data goes through multiprocessing's own pipe, never the environment) and a node-id prefix of
    its own; the forkserver's start (``ignore``) gets none."""
    environ = dict(os.environ)
    a, b = mp_spawn.get_preparation_data("Pool-1"), mp_spawn.get_preparation_data("Pool-2")
    assert a["labd"]["fd"] == 99 and a["labd"]["node"] == "n7" and a["labd"]["secrets"] == {"K": "v"}
    assert a["labd"]["session"] == "s1" and a["labd"]["params"] == {"a": 1} and a["labd"]["models"] == {"m": {}}
    assert a["labd"]["prefix"].startswith("f3.f") and a["labd"]["prefix"] != b["labd"]["prefix"]
    assert "labd" not in mp_spawn.get_preparation_data("ignore")
    assert dict(os.environ) == environ  # nothing put in the environment children inherit


def test_a_child_takes_only_a_sequenced_packet_unix_socket() -> None:
    """The descriptor number a child inherits may name a file or another socket (a process started some other
    way): those are left alone, open; the relay's kind is taken and made non-inheritable."""
    with tempfile.TemporaryFile() as f:
        assert spawned._relay_socket(f.fileno()) is None  # noqa: SLF001
        os.fstat(f.fileno())  # still open
    tcp = socket.socket()
    try:
        assert spawned._relay_socket(tcp.fileno()) is None  # noqa: SLF001
        assert tcp.fileno() >= 0
    finally:
        tcp.close()
    assert spawned._relay_socket(None) is None and spawned._relay_socket(-1) is None  # noqa: SLF001
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        fd = os.dup(theirs.fileno())
        os.set_inheritable(fd, True)
        got = spawned._relay_socket(fd)  # noqa: SLF001
        assert got is not None and got.fileno() == fd and not os.get_inheritable(fd)
        got.send(b"x")
        assert ours.recv(10) == b"x"
        got.close()
    finally:
        ours.close()
        theirs.close()


def test_attach_outside_a_spawned_child_does_nothing() -> None:
    """Called where multiprocessing is not preparing a child (no preparation data up the stack), ``attach`` makes
    no context."""
    from labd.runner import context

    before = context._current  # noqa: SLF001
    spawned.attach()
    assert context._current is before  # noqa: SLF001


def test_after_the_relay_closed_new_processes_start_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process started after the session's end closed the relay (a pool refilling its workers, atexit code) gets
    neither the descriptor (-1 would make multiprocessing's exec fail) nor the setup: it starts as it would
    without labd."""
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(mp_util, "spawnv_passfds", lambda path, args, fds: calls.append(tuple(fds)) or 0)
    monkeypatch.setattr(mp_spawn, "get_preparation_data", mp_spawn.get_preparation_data)
    spawned.install(lambda: -1, 1000, Path("/tmp"), {}, lambda: None, lambda: "f1.")
    assert "labd" not in mp_spawn.get_preparation_data("Pool-1")
    mp_util.spawnv_passfds("py", ["py", "-c", "spawn_main()", "--multiprocessing-fork"], [7])
    assert calls == [(7,)]
