"""Client.submit at its edges: a submitted function that forks (the child leaves the function's step without
finishing it), a return value that does not unpickle in the client, and an exception whose ``__str__`` raises."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import labd
from tests.conftest import module_home, running_daemon


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """One daemon for the module (each test submits its own sessions)."""
    with module_home("lsuberr") as (base, _env), running_daemon(base / "home") as d, d.client() as c:
        yield c


class BadStr(Exception):
    """An exception whose ``str()`` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("str boom")


def raise_bad_str() -> None:
    raise BadStr("the real failure")


def forks_inside(child_raises: bool) -> dict[str, Any]:
    """Fork in the submitted function: the child returns ``"CHILD"`` (or raises) and so leaves the function's step;
    the parent waits for it and returns what it saw."""
    import os

    pid = os.fork()
    if pid == 0:
        if child_raises:
            raise ValueError("the child fails")
        return {"who": "CHILD"}
    _, status = os.waitpid(pid, 0)
    return {"who": "PARENT", "child_code": os.waitstatus_to_exitcode(status)}


def returns_a_runner_only_class(directory: str) -> Any:
    """A value whose class lives in a module only the runner can import (``directory`` is added to its path)."""
    import sys

    sys.path.insert(0, directory)
    import only_in_runner

    return only_in_runner.Thing(3)


def _runner_only_module(tmp_path: Path) -> str:
    (tmp_path / "only_in_runner.py").write_text(
        "class Thing:\n    def __init__(self, n):\n        self.n = n\n\n    def __repr__(self):\n"
        "        return f'Thing({self.n})'\n")
    return str(tmp_path)


@pytest.mark.parametrize("child_raises", [False, True], ids=["child-returns", "child-raises"])
def test_a_forked_child_leaving_the_submitted_function_does_not_finish_its_step(client, child_raises: bool) -> None:
    """A submitted function forks and its child leaves the function (returning, or raising): the session completes
    with the parent's value; the function's step has one ``step.finished`` (the parent's, completed) and one
    checkpoint, none of them the child's."""
    sid = client.submit(forks_inside, child_raises)
    assert client.result(sid, timeout=60) == {"who": "PARENT", "child_code": 1 if child_raises else 0}
    events = list(client.history(sid))
    (step,) = [e["node_id"] for e in events if e["kind"] == "step.started"]
    assert [(e["node_id"], e["payload"]["status"]) for e in events if e["kind"] == "step.finished"] == \
        [(step, "completed")]
    assert [e["node_id"] for e in events if e["kind"] == "step.checkpoint"] == [step]


def test_a_forked_childs_exception_is_not_recorded_as_the_functions(client) -> None:
    """A forked child's exception that leaves the submitted function is the child's, not the function's: no
    ``labd.function.error`` is recorded for it (the session completes)."""
    sid = client.submit(forks_inside, True)
    assert client.result(sid, timeout=60)["who"] == "PARENT"
    assert not [e for e in client.history(sid, kinds=["custom"]) if e["payload"]["name"] == "labd.function.error"]


def test_a_result_that_does_not_unpickle_here_raises_remote_error(client, tmp_path: Path) -> None:
    """A completed session whose value's class only the runner can import: ``result()`` raises ``RemoteError``
    (``ResultNotLoadable``, status completed) saying the result could not be unpickled in this process, with the
    value's type and repr and the unpickling error, which is chained as its ``__cause__`` (not a bare
    ``ModuleNotFoundError``)."""
    sid = client.submit(returns_a_runner_only_class, _runner_only_module(tmp_path))
    with pytest.raises(labd.RemoteError) as info:
        client.result(sid, timeout=60)
    err = info.value
    assert (err.type_name, err.status) == ("ResultNotLoadable", "completed")
    assert "could not be unpickled in this process" in err.message
    assert "only_in_runner.Thing: Thing(3)" in err.message
    assert "ModuleNotFoundError: No module named 'only_in_runner'" in err.message
    assert isinstance(err.__cause__, ModuleNotFoundError)
    assert client.session(sid)["status"] == "completed"


def test_a_result_that_does_not_unpickle_here_names_its_session(client, tmp_path: Path) -> None:
    """The ``ResultNotLoadable`` error of ``result()`` names the session (in its message and ``.session``)."""
    sid = client.submit(returns_a_runner_only_class, _runner_only_module(tmp_path))
    with pytest.raises(labd.RemoteError) as info:
        client.result(sid, timeout=60)
    assert info.value.session == sid and f"session {sid}" in info.value.message


def test_an_exception_whose_str_raises_keeps_its_type(client) -> None:
    """A function raising an exception whose ``__str__`` raises: the step and the session fail with the
    function's exception type (``BadStr``), not the ``RuntimeError`` of its ``__str__``, and the text says
    ``str() failed`` and why."""
    sid = client.submit(raise_bad_str)
    with pytest.raises(labd.RemoteError) as info:
        client.result(sid, timeout=60)
    err = info.value
    assert err.type_name.rsplit(".", 1)[-1] == "BadStr" and err.status == "failed"
    text = "<BadStr: str() failed: RuntimeError: str boom>"
    assert text in err.message
    (finished,) = [e["payload"] for e in client.history(sid, kinds=["step.finished"])]
    assert (finished["status"], finished["error"]) == ("failed", f"BadStr: {text}")
    assert client.session(sid)["status"] == "failed"


def test_an_exception_whose_str_raises_is_recorded_as_the_functions_error(client) -> None:
    """The exception whose ``__str__`` raises is still recorded as ``labd.function.error`` (type, safe message,
    pickle), so ``RemoteError.exception`` is that exception."""
    sid = client.submit(raise_bad_str)
    with pytest.raises(labd.RemoteError) as info:
        client.result(sid, timeout=60)
    assert type(info.value.exception).__name__ == "BadStr"
