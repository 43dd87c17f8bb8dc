"""The per-session output cap: the runner keeps the first bytes and drops the rest (recording it), the
daemon backstops a runner that ignores its cap, `show`/`logs` say so, and bad values are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labd.daemon.config import ConfigError, load_config
from labd.ipc import Client, LabdError
from tests.conftest import SUPPORT, module_home, running_daemon

sys.path.insert(0, str(SUPPORT))
from labd_faultflows import line  # noqa: E402

MiB = 2**20


@pytest.fixture(scope="module")
def shared() -> Iterator[dict[str, Any]]:
    """One daemon for the whole module (its tests start their own sessions and do not interfere)."""
    with module_home("lcap") as (base, env), running_daemon(base / "home") as d:
        yield {"daemon": d, "env": env}


@pytest.fixture
def client(shared: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    for k, v in shared["env"].items():  # over the per-test isolated_env: talk to the module's daemon
        monkeypatch.setenv(k, v)
    with shared["daemon"].client() as c:
        yield c


def labd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labd", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))


def stored_output(c: Client, sid: str) -> bytes:
    return "".join(e["payload"]["text"] for e in c.history(sid, kinds=["output"])).encode()


def expected(lines: int) -> bytes:
    return b"".join(line(i) for i in range(lines))


def test_runner_keeps_the_first_bytes_in_order_and_records_the_truncation(client: Client) -> None:
    """3 MB of output under a 1 MiB cap: exactly the first 1 MiB is stored, in order; one output.truncated
    when dropping starts and one with the total dropped at the end; the session is not disturbed."""
    sid = client.start("labd_faultflows:numbered", params={"lines": 30_000}, max_output="1M")
    final = client.wait(sid, timeout=90)
    assert final["status"] == "completed"
    assert final["limits"]["output"] == MiB
    out = stored_output(client, sid)
    assert out == expected(30_000)[:MiB]
    marks = [e["payload"] for e in client.history(sid, kinds=["output.truncated"])]
    assert marks == [{"cap": MiB, "by": "runner"},
                     {"cap": MiB, "dropped": 3_000_000 - MiB, "by": "runner", "kinds": {"output": 3_000_000 - MiB}}]
    show = labd("show", sid)
    assert show.returncode == 0, show.stderr
    assert "[output truncated at 1.0M: 1.9M dropped]" in show.stdout
    logs = labd("logs", sid, "--raw")  # notes go to stderr, the session's own output to stdout
    assert logs.stdout.encode() == expected(30_000)[:MiB]
    assert logs.stderr.splitlines() == ["[output truncated at 1.0M: the rest is not kept]",
                                        "[output truncated at 1.0M: 1.9M dropped]"]


def test_output_under_the_cap_is_kept_whole_and_the_default_cap_applies(client: Client) -> None:
    """Without --max-output the daemon's default (1G) is the session's limit; output under it is complete
    and nothing is marked truncated."""
    sid = client.start("labd_faultflows:numbered", params={"lines": 5000})
    final = client.wait(sid, timeout=60)
    assert final["status"] == "completed" and final["limits"]["output"] == 2**30
    assert stored_output(client, sid) == expected(5000)
    assert not list(client.history(sid, kinds=["output.truncated"]))
    assert "truncated" not in labd("show", sid).stdout


def test_no_cap_when_asked(client: Client) -> None:
    """`--max-output none` runs a session without any cap (limit stored as null)."""
    r = labd("run", "labd_faultflows:numbered", "-p", "lines=100", "--max-output", "none")
    assert r.returncode == 0, r.stderr
    final = client.wait(r.stdout.strip(), timeout=60)
    assert final["status"] == "completed" and final["limits"]["output"] is None


def test_daemon_drops_output_of_a_runner_that_ignores_its_cap(client: Client) -> None:
    """A session emitting output events around the capture (its runner not honouring the cap) is cut by the
    daemon at cap + 1 MiB: the rest is not stored, one output.truncated by the daemon marks the spot, its
    total is recorded at the end, and the status counters keep the exact numbers."""
    before = client.status()["counters"].get("dropped.output.chars", 0)
    sid = client.start("labd_faultflows:ignores_cap", params={"chunks": 64, "size": 64 * 1024}, max_output="1M")
    final = client.wait(sid, timeout=90)
    assert final["status"] == "completed"
    kept = len(stored_output(client, sid))
    assert MiB < kept <= 2 * MiB
    marks = [e["payload"] for e in client.history(sid, kinds=["output.truncated"])]
    assert marks[0] == {"cap": MiB, "by": "daemon"}
    assert marks[-1] == {"cap": MiB, "dropped": 64 * 64 * 1024 - kept, "by": "daemon",
                         "kinds": {"output": 64 * 64 * 1024 - kept}}
    assert client.status()["counters"]["dropped.output.chars"] - before == 64 * 64 * 1024 - kept
    assert "dropped]" in labd("show", sid).stdout


@pytest.mark.parametrize(("value", "message"), [
    ("10", "add a unit: 10M"),
    ("ten", "bad size"),
    ("100B", "at least 1K"),
])
def test_bad_max_output_is_refused_by_the_cli(client: Client, value: str, message: str) -> None:
    """`labd run --max-output` refuses a bare number, a non-size and a uselessly small cap, saying why."""
    r = labd("run", "demo.sleep", "--max-output", value)
    assert r.returncode != 0 and message in (r.stderr + r.stdout), r.stderr


@pytest.mark.parametrize("value", ["10", "x", 100, True, -5, 1.5, [1]])
def test_bad_output_limits_are_refused_by_the_daemon(client: Client, value: Any) -> None:
    """session.start with a bad ``limits.output`` gets ``bad_limits`` (not a crash, not a silent default)."""
    with pytest.raises(LabdError) as info:
        client.request("session.start", workflow="demo.sleep", params={}, limits={"output": value})
    assert info.value.code == "bad_limits"
    assert client.ping()


def test_config_max_output(tmp_path: Path) -> None:
    """``[daemon] max_output`` takes a size or "none"; anything else stops the daemon with a clear message."""
    (tmp_path / "config.toml").write_text('[daemon]\nmax_output = "10M"\n')
    assert load_config(tmp_path).max_output == 10 * MiB
    (tmp_path / "config.toml").write_text('[daemon]\nmax_output = "none"\n')
    assert load_config(tmp_path).max_output is None
    for bad in ('"10"', '"lots"', "12", "true"):
        (tmp_path / "config.toml").write_text(f"[daemon]\nmax_output = {bad}\n")
        with pytest.raises(ConfigError, match="max_output"):
            load_config(tmp_path)


def _chatty(n: int) -> int:
    for i in range(n):
        print(f"{i:09d}")
    return n


def test_submitted_function_takes_max_output(client: Client) -> None:
    """Client.submit(..., max_output=...) caps a function session's output like `labd run --max-output`."""
    sid = client.submit(_chatty, 1000, max_output="2K")
    assert client.result(sid, timeout=90) == 1000
    assert client.session(sid)["limits"]["output"] == 2048
    assert len(stored_output(client, sid)) == 2048
    marks = [e["payload"] for e in client.history(sid, kinds=["output.truncated"])]
    assert marks[-1] == {"cap": 2048, "dropped": 10_000 - 2048, "by": "runner", "kinds": {"output": 10_000 - 2048}}
