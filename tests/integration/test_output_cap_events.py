"""The output cap covers everything a workflow writes into the record: besides its stdout and stderr, its log records
(stdlib logging and ``ctx.log``) and its custom events (``ctx.emit``) draw on the same ``limits.output``. Past it they
are dropped and ``output.truncated`` says how much (per kind); labd's own events (lifecycle, steps, approvals) are
always recorded; and the daemon's backstop drops what a runner ignoring its cap sends beyond cap + 1 MiB."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from labd.ipc import Client
from tests.conftest import wait_until

MiB = 2**20
N, SIZE = 2000, 50_000  # 2,000 records of 50 KB: 100 MB a workflow could otherwise put into the database
SLACK = 64 * 1024  # the stored JSON of a payload may differ a little from what the runner counted


@pytest.fixture
def client(shared_daemon: Any) -> Iterator[Client]:
    """A client of the module's daemon (tests/conftest.py ``module_daemon``: these tests start their own sessions)."""
    with shared_daemon.client() as c:
        yield c


# ---- the workflows (module-level functions, sent with Client.submit) ---------------------------------------------
def _log_flood(n: int, size: int) -> int:
    """``n`` warnings of ``size`` characters, half through stdlib logging and half through ``ctx.log``; then a print
    and a step."""
    import logging

    import labd

    ctx = labd.context()
    text = "w" * size
    for i in range(n):
        if i % 2:
            logging.getLogger("flood").warning(text)
        else:
            ctx.log.warning(text)
    print("printed after the flood")
    with ctx.step("after the flood"):
        pass
    return n


def _custom_flood(n: int, size: int) -> int:
    """``n`` custom events of ``size`` characters of data each; then a step."""
    import labd

    ctx = labd.context()
    text = "c" * size
    for i in range(n):
        ctx.emit("blob", {"i": i, "text": text})
    with ctx.step("after the flood"):
        pass
    return n


def _flood_then_ask(n: int, size: int) -> str:
    """Past the cap with log records, then a step asking a human for approval (answered by the test)."""
    import logging

    import labd

    ctx = labd.context()
    for _ in range(n):
        logging.getLogger("flood").warning("a" * size)
    with ctx.step("ask"):
        decision = ctx.approval("go", "Carry on?", options=["approve", "reject"])
    return str(decision.decision)


def _around_the_cap(n: int, size: int) -> int:
    """Writes log and custom events to the channel itself, around the runner's cap (a runner that does not honour
    it, as far as the daemon can tell); then a step."""
    import labd

    ctx = labd.context()
    for _ in range(n):
        ctx._emit("log", {"level": "warning", "event": "l" * size, "logger": "raw"}, None)  # noqa: SLF001
        ctx._emit("custom", {"name": "raw", "data": "c" * size}, None)  # noqa: SLF001
    with ctx.step("after the flood"):
        pass
    return n


# ---- helpers ---------------------------------------------------------------------------------------------------------
def stored(c: Client, sid: str, kind: str) -> list[dict[str, Any]]:
    return list(c.history(sid, kinds=[kind]))


def stored_bytes(events: list[dict[str, Any]]) -> int:
    """The bytes the events' payloads take in the record (as JSON)."""
    return sum(len(orjson.dumps(e["payload"])) for e in events)


def marks(c: Client, sid: str) -> list[dict[str, Any]]:
    return [e["payload"] for e in stored(c, sid, "output.truncated")]


def after_flood(c: Client, sid: str) -> str | None:
    """The status the step "after the flood" finished with."""
    done = [p["status"] for p in (e["payload"] for e in stored(c, sid, "step.finished"))
            if p["name"] == "after the flood"]
    return done[0] if len(done) == 1 else None


def kinds_of(c: Client, sid: str) -> list[str]:
    return [e["kind"] for e in c.history(sid)]


# ---- tests -----------------------------------------------------------------------------------------------------------
def test_log_records_count_against_the_output_cap(client: Client) -> None:
    """2,000 warnings of 50 KB (stdlib logging and ctx.log) under a 1 MiB cap: the log events stored stay within the
    cap (plus a bounded slack), the session completes normally, one output.truncated says dropping started and one at
    the end gives the total dropped, per kind; the cap is one budget, so a print after it is dropped too, while the
    step after it is recorded."""
    sid = client.submit(_log_flood, N, SIZE, max_output="1M")
    assert client.result(sid, timeout=120) == N
    final = client.session(sid)
    assert final["status"] == "completed" and final["limits"]["output"] == MiB
    logs = stored(client, sid, "log")
    kept = stored_bytes(logs)
    assert MiB - 2 * SIZE < kept <= MiB + SLACK
    assert {e["payload"]["logger"] for e in logs} == {"flood", "structlog"}  # both routes, until the cap
    first, total = marks(client, sid)
    assert first == {"cap": MiB, "by": "runner"}
    assert total["cap"] == MiB and total["by"] == "runner"
    assert total["kinds"]["log"] >= N * SIZE - MiB
    assert total["kinds"]["output"] == len("printed after the flood\n")
    assert total["dropped"] == sum(total["kinds"].values())
    assert not stored(client, sid, "output")
    assert after_flood(client, sid) == "completed"


def test_custom_events_count_against_the_output_cap(client: Client) -> None:
    """2,000 custom events (ctx.emit) of 50 KB under a 1 MiB cap: the custom events stored stay within the cap, in
    order from the first, the drop is reported with its total, and the session and its step complete normally."""
    sid = client.submit(_custom_flood, N, SIZE, max_output="1M")
    assert client.result(sid, timeout=120) == N
    assert client.session(sid)["status"] == "completed"
    custom = stored(client, sid, "custom")
    assert MiB - 2 * SIZE < stored_bytes(custom) <= MiB + SLACK
    assert [e["payload"]["data"]["i"] for e in custom] == list(range(len(custom)))  # the first ones, none skipped
    first, total = marks(client, sid)
    assert first == {"cap": MiB, "by": "runner"}
    assert set(total["kinds"]) == {"custom"} and total["dropped"] >= (N - len(custom)) * SIZE
    assert after_flood(client, sid) == "completed"


def test_lifecycle_steps_and_approvals_are_recorded_after_the_cap(client: Client) -> None:
    """Once the cap is spent (here by log records), labd's own events are still recorded in full: the step, the
    approval asked and its answer, the session's outcome and end — all after the output.truncated marker."""
    sid = client.submit(_flood_then_ask, 200, SIZE, max_output="1M")
    wait_until(lambda: client.approvals(sid), timeout=60, interval=0.1, what="the approval asked after the flood")
    client.approve(sid)
    assert client.result(sid, timeout=60) == "approve"
    assert stored_bytes(stored(client, sid, "log")) <= MiB + SLACK
    order = kinds_of(client, sid)
    cut = order.index("output.truncated")
    after = order[cut:]
    for kind in ("step.started", "approval.requested", "approval.resolved", "step.finished", "session.finished",
                 "session.ended"):
        assert kind in after, (kind, after)
    assert client.session(sid)["status"] == "completed"


def test_daemon_drops_log_and_custom_events_of_a_runner_that_ignores_its_cap(client: Client) -> None:
    """A session writing log and custom events to the channel itself (around its runner's cap) is cut by the daemon
    at cap + 1 MiB: the rest is not stored, one output.truncated by the daemon marks the spot and another gives the
    total per kind, the status counters count them; its step and lifecycle events are all recorded."""
    counters = client.status()["counters"]
    before = {k: counters.get(f"dropped.{k}.chars", 0) for k in ("log", "custom")}
    n, size = 64, 64 * 1024
    sid = client.submit(_around_the_cap, n, size, max_output="1M")
    assert client.result(sid, timeout=120) == n
    assert client.session(sid)["status"] == "completed"
    logs, custom = stored(client, sid, "log"), stored(client, sid, "custom")
    kept = stored_bytes(logs) + stored_bytes(custom)
    assert MiB < kept <= 2 * MiB
    cut = [m for m in marks(client, sid) if m["by"] == "daemon"]
    assert cut[0] == {"cap": MiB, "by": "daemon"}
    total = cut[-1]
    assert set(total["kinds"]) == {"log", "custom"}
    assert total["dropped"] == sum(total["kinds"].values()) >= 2 * n * size - 2 * MiB - SLACK
    counters = client.status()["counters"]
    for k in ("log", "custom"):
        assert counters[f"dropped.{k}.chars"] - before[k] == total["kinds"][k]
    order = kinds_of(client, sid)
    after = order[order.index("output.truncated"):]
    for kind in ("step.started", "step.finished", "session.finished", "session.ended"):
        assert kind in after, (kind, after)
