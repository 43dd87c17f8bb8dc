"""`labd result`: what a session returned, from the CLI, once it has ended; a pickled value or a remote exception is
shown by what its runner recorded of it, never unpickled (unpickling runs the session's code in the user's shell)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from labd.ipc.functions import RemoteError
from tests.conftest import wait_until
from tests.integration.cli_support import labd

pytestmark = pytest.mark.timeout(180)


def _ran(*args: str) -> str:
    done = labd("run", *args, "--wait")
    assert done.returncode in (0, 1), done.stderr
    return done.stdout.strip()


def test_a_workflows_result_is_printed_a_string_as_it_is_and_json_otherwise(shared_daemon) -> None:
    """A string result is printed as it is (a script can use it: ``$(labd result S)``), any other value as JSON;
    ``--json`` gives JSON for both; a session still running is waited for."""
    text = _ran("demo.compute", "-p", "rounds=1", "-p", "work=10")
    got = labd("result", text)
    assert got.returncode == 0, got.stderr
    hexdigest = got.stdout.strip()
    assert len(hexdigest) == 64 and int(hexdigest, 16) >= 0 and got.stdout.count("\n") == 1
    assert json.loads(labd("result", text, "--json").stdout) == hexdigest
    assert f"labd result {text}" in labd("show", text).stdout  # where to find it, said where people look
    running = labd("run", "demo.count", "-p", "n=3", "-p", "delay=0.3").stdout.strip()
    waited = labd("result", running)  # started just now: it is waited for
    assert waited.returncode == 0 and json.loads(waited.stdout) == 3, waited.stderr


def test_a_session_that_did_not_complete_says_why_and_exits_1(shared_daemon) -> None:
    """A failed session: exit 1, its reason on stderr, nothing on stdout; ``--json`` gives its status and error."""
    sid = _ran("demo.fail", "-p", "message=the flux capacitor")
    got = labd("result", sid)
    assert got.returncode == 1 and got.stdout == ""
    assert "failed" in got.stderr and "the flux capacitor" in got.stderr, got.stderr
    as_json = json.loads(labd("result", sid, "--json").stdout)
    assert as_json["status"] == "failed" and "the flux capacitor" in json.dumps(as_json["error"])


def test_a_timeout_exits_2_and_leaves_the_session_running(shared_daemon) -> None:
    """``--timeout`` on a session that runs on: exit 2 (as ``labd wait``), the session untouched."""
    sid = labd("run", "demo.sleep", "-p", "seconds=60").stdout.strip()
    try:
        wait_until(lambda: json.loads(labd("show", sid, "--json").stdout)["status"] == "running", timeout=60,
                   what="the session running")  # `run` answers once it is created, before its runner starts
        got = labd("result", sid, "--timeout", "1s")
        assert got.returncode == 2, (got.returncode, got.stderr)
        assert json.loads(labd("show", sid, "--json").stdout)["status"] == "running"
    finally:
        labd("kill", sid)


def test_a_pickled_result_is_shown_by_its_repr_and_never_unpickled(shared_daemon, tmp_path: Path) -> None:
    """A submitted function returns an object whose unpickling would create a file (any code could run there):
    ``labd result`` prints its recorded repr and says it is a pickled value, and the file is not created; the SDK's
    ``result`` does unpickle it (the file appears), which is what shows the object really was that dangerous."""
    marker = tmp_path / "unpickled"
    c = shared_daemon.client()
    try:
        sid = c.submit(lambda m: type("Trap", (), {  # pickled by value: nothing of this test module is imported
            "__reduce__": lambda self: (__import__("pathlib").Path.touch, (__import__("pathlib").Path(m),)),
            "__repr__": lambda self: "<a trap>"})(), str(marker))
        c.wait(sid, timeout=60)
        got = labd("result", sid)
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == "<a trap>" and "pickled" in got.stderr and "Trap" in got.stderr
        assert "does not unpickle" in got.stderr
        stored = json.loads(labd("result", sid, "--json").stdout)
        assert stored["type"].endswith("Trap") and stored["repr"] == "<a trap>" and stored["labd.pickle"]
        assert not marker.exists()
        c.result(sid)
        assert marker.exists()
    finally:
        c.close()


def test_a_remote_exception_is_shown_by_its_text_and_never_unpickled(shared_daemon, tmp_path: Path) -> None:
    """A submitted function raises an exception whose unpickling would create a file: ``labd result`` exits 1 with the
    exception's type, message and remote traceback on stderr, and the file is not created (the SDK's ``result``
    unpickles the exception, and the file appears)."""
    marker = tmp_path / "unpickled"

    def boom(m: str) -> None:
        cls = type("Boom", (Exception,), {
            "__reduce__": lambda self: (__import__("pathlib").Path.touch, (__import__("pathlib").Path(m),))})
        raise cls("the reactor is on fire")

    c = shared_daemon.client()
    try:
        sid = c.submit(boom, str(marker))
        c.wait(sid, timeout=60)
        got = labd("result", sid)
        assert got.returncode == 1 and got.stdout == ""
        assert "Boom: the reactor is on fire" in got.stderr and "remote traceback" in got.stderr, got.stderr
        as_json = json.loads(labd("result", sid, "--json").stdout)
        assert as_json["error"]["message"] == "the reactor is on fire" and "boom" in as_json["error"]["traceback"]
        assert not marker.exists()
        with pytest.raises(RemoteError):
            c.result(sid)
        assert marker.exists()
    finally:
        c.close()


def test_a_workflow_forging_a_pickled_result_or_a_function_error_never_gets_it_unpickled(shared_daemon,
                                                                                        tmp_path: Path) -> None:
    """Only a submitted function's runner pickles its result and records its exception as a pickle. Another workflow
    returning a dict shaped like a recorded pickle, or emitting the function's error event with a pickle, whose
    unpickling would create a file: neither ``labd result`` nor the SDK's ``result`` unpickles it (the SDK did: the
    workflow's code ran, unsandboxed, in the process reading its result: review). The dict is the workflow's JSON."""
    marker = tmp_path / "pwned"
    (tmp_path / "forged.py").write_text(textwrap.dedent(f"""
        import base64, pathlib, pickle

        class Trap:
            def __reduce__(self):
                return (pathlib.Path.touch, (pathlib.Path({str(marker)!r}),))

        def _trap():
            return base64.b64encode(pickle.dumps(Trap())).decode()

        def returns(ctx):
            return {{"labd.pickle": _trap(), "size": "huge", "type": ["x"], "repr": 7}}

        def raises(ctx):
            ctx.emit("labd.function.error", {{"type": "X", "message": "m", "traceback": "", "pickle": _trap()}})
            raise ValueError("plain failure")
    """))
    done = labd("run", "./forged.py:returns", "--wait", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    sid = done.stdout.strip()
    got = labd("result", sid, "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["size"] == "huge", got.stderr
    shown = labd("result", sid)
    assert shown.returncode == 0 and '"labd.pickle"' in shown.stdout and "pickled" not in shown.stderr
    failed = labd("run", "./forged.py:raises", "--wait", cwd=tmp_path).stdout.strip()
    assert labd("result", failed).returncode == 1
    c = shared_daemon.client()
    try:
        assert c.result(sid)["labd.pickle"]  # the dict itself
        with pytest.raises(RemoteError) as raised:
            c.result(failed)
        assert raised.value.type_name == "ValueError" and raised.value.exception is None
    finally:
        c.close()
    assert not marker.exists()


def test_a_result_json_cannot_carry_as_it_is_is_recorded_not_a_runner_crash(shared_daemon, tmp_path: Path) -> None:
    """A string holding a lone surrogate (bytes decoded with ``surrogateescape``) and an int of 5,000 digits: the
    session completes and its result is recorded as text (the runner crashed encoding them: "runner exited with code
    1 before reporting an outcome", a labd traceback in the reason)."""
    (tmp_path / "odd.py").write_text(
        "def odd(ctx):\n    return {'text': 'bad \\udcff byte', 'big': 10**5000, 'fine': 2**70, 'keys': {2**64: 1}}\n")
    done = labd("run", "./odd.py", "--wait", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    value = json.loads(labd("result", done.stdout.strip(), "--json").stdout)
    assert value["text"] == "bad \\udcff byte" and value["fine"] == str(2**70)
    assert value["big"].startswith("<int of 16,610 bits") and value["keys"] == {str(2**64): 1}
