"""``[daemon] max_session_record``: what one session may record of labd's own kinds (steps, agents, LLM calls,
files, approvals...). A workflow that writes such events to its channel itself, past the bound, is stopped with a
``limit.exceeded`` (``limit: "recorded events"``), and the daemon stores no more of them; what a workflow writes
through the output cap's kinds (output, custom events) is not counted here; other sessions and the daemon go on."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from labd.ipc import Client
from tests.conftest import DaemonProc, module_daemon_on, pointed_at

MiB = 2**20
BOUND = 2 * MiB
SIZE = 60_000  # one forged event's name
N = 500  # 30 MB of step names without the bound


@pytest.fixture(scope="module")
def record_daemon(request: pytest.FixtureRequest) -> Iterator[DaemonProc]:
    """One daemon for the module, with a 2 MiB ``max_session_record``."""
    with module_daemon_on(request, '[daemon]\nmax_session_record = "2M"\n') as d:
        yield d


@pytest.fixture
def client(record_daemon: DaemonProc, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    with pointed_at(record_daemon, monkeypatch).client() as c:
        yield c


def _forged_flood(n: int, size: int) -> str:
    """Writes ``n`` ``replay.diverged`` events with ``size``-character names to the channel itself (a labd kind the
    output cap does not count; a runner that writes its own frames), then works on in short steps for a minute."""
    import time

    import labd

    ctx = labd.context()
    for i in range(n):
        ctx._emit("replay.diverged", {"name": f"{i:05d}" + "n" * size}, None)  # noqa: SLF001
    for i in range(600):
        with ctx.step(f"after {i}"):
            time.sleep(0.1)
    return "not stopped"


def _workflow_output(size: int) -> str:
    """Prints ``size`` characters and emits as many in custom events (the output cap's kinds), in a step."""
    import labd

    ctx = labd.context()
    with ctx.step("write"):
        for i in range(size // 50_000):
            print("p" * 50_000)
            ctx.emit("chunk", {"i": i, "text": "c" * 50_000})
    return "done"


def test_a_session_past_the_bound_is_stopped_and_no_more_is_stored(client: Client) -> None:
    """30 MB of forged step-kind events under a 2 MiB bound: the session is stopped (``limit.exceeded`` with
    limit ``recorded events``, and so its reason), at most one event past the bound is stored, the daemon counts
    what it dropped, and a session started afterwards runs normally."""
    before = client.status()["counters"].get("dropped.record.events", 0)
    sid = client.submit(_forged_flood, N, SIZE)
    final = client.wait(sid, timeout=120)
    assert final["status"] in ("cancelled", "failed"), final
    assert (final.get("reason") or "").startswith("stopped: recorded events "), final
    breach = [e["payload"] for e in client.history(sid, kinds=["limit.exceeded"])]
    assert len(breach) == 1 and breach[0]["limit"] == "recorded events" and breach[0]["max"] == BOUND
    assert breach[0]["measured"] > BOUND and breach[0]["unit"] == "bytes"
    kept = list(client.history(sid, kinds=["replay.diverged"]))
    stored = sum(len(orjson.dumps(e["payload"])) for e in kept)
    assert 0 < stored <= BOUND + SIZE + 100 and len(kept) < N
    assert [int(e["payload"]["name"][:5]) for e in kept] == list(range(len(kept)))  # the first ones, in order
    assert client.status()["counters"].get("dropped.record.events", 0) > before
    assert final["record_bytes"] > BOUND  # the session view shows what the run recorded against the bound
    later = client.submit(_workflow_output, 100_000)
    assert client.result(later, timeout=60) == "done"


def test_output_and_custom_events_do_not_count(client: Client) -> None:
    """3 MB printed and 3 MB of custom events (bounded by the output cap, not by this bound) and a step: the session
    completes under the 2 MiB bound, with nothing dropped."""
    sid = client.submit(_workflow_output, 3_000_000)
    assert client.result(sid, timeout=60) == "done"
    assert not list(client.history(sid, kinds=["limit.exceeded"]))
    assert len(list(client.history(sid, kinds=["custom"]))) == 60
    view = client.session(sid)
    assert view["output_chars"] >= 6_000_000 and view["record_bytes"] < BOUND, view


def _padded_output(n: int, size: int) -> str:
    """``n`` output events with an empty text and ``size`` characters in an extra field, written to the channel."""
    import labd

    ctx = labd.context()
    pad = "x" * size
    for _ in range(n):
        ctx._emit("output", {"stream": "stdout", "text": "", "pad": pad}, None)  # noqa: SLF001
    return "done"


def test_output_events_with_an_extra_field_do_not_get_past_the_caps(client: Client) -> None:
    """From the review: output events written to the channel itself with an empty text and a large extra field got
    past both the output cap (the daemon's backstop sized an output event by its text alone) and this bound (which
    leaves the output kinds to the output cap). 30 MB in 60 such events under a 1 MiB output cap and the 2 MiB
    bound: at most the cap plus the backstop's 1 MiB margin (and one event) is stored, and the drop is recorded."""
    sid = client.submit(_padded_output, 60, 500_000, max_output="1M")
    client.wait(sid, timeout=60)
    stored = sum(len(orjson.dumps(e["payload"])) for e in client.history(sid, kinds=["output"]))
    assert stored <= 2 * MiB + 600_000, f"{stored:,} bytes of output stored under a 1 MiB cap"
    assert any(e["payload"].get("by") == "daemon" for e in client.history(sid, kinds=["output.truncated"]))


def _edge_flood(n: int, edges: int) -> str:
    """``n`` steps each naming ``edges`` edges (short in the event, a row each in the DAG's table), then works on."""
    import time

    import labd

    ctx = labd.context()
    for i in range(n):
        ctx._emit("step.started", {"name": f"join {i}", "edges": [["n1", "data"]] * edges}, f"e{i}")  # noqa: SLF001
    for i in range(600):
        with ctx.step(f"after {i}"):
            time.sleep(0.1)
    return "not stopped"


def test_dag_edges_count_as_the_rows_they_become(client: Client) -> None:
    """Edges cost the store a row each (~90 bytes) for ~16 bytes of the event: an attack review grew a store by
    174 MB in 20 s with 2,000,000 of them. They count against the bound as stored: 10 steps of 10,000 edges
    (~1.4 MB sent, under the 2 MiB bound; ~9 MB stored) stop the session."""
    sid = client.submit(_edge_flood, 10, 10_000)
    final = client.wait(sid, timeout=120)
    assert (final.get("reason") or "").startswith("stopped: recorded events "), final
    stored = list(client.history(sid, kinds=["step.started"]))
    assert len([e for e in stored if e["payload"]["name"].startswith("join")]) < 10
