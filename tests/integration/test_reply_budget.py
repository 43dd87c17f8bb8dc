"""Replies clients do not read: the daemon holds at most its budget of them (daemon/reply_budget.py), answers
``busy`` past it, and the SDK retries that until the budget frees."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from labd.ipc.wire import Codec
from tests.conftest import running_daemon, wait_until

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
BUDGET = 8 * MIB
MAX_MESSAGE = 256 * 1024  # a page of events (~2 MB) is then a reply in ~11 parts
HOGS, ASKS = 40, 2  # 80 unread replies of ~2.7 MB: ~215 MB the daemon would hold without a budget

FLOW = '''
def chatter(ctx, n: int = 200, size: int = 10_000) -> int:
    for i in range(n):
        ctx.emit("blob", {"i": i, "text": "x" * size})
    return n
'''


def _hog(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A client holding the key that takes in at most one message on its side and never reads."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 1)
    s.setsockopt(zmq.RCVBUF, 4096)
    s.connect(endpoint)
    return s


def _answered(c: Any, parts0: int, per_reply: int, busy0: int) -> int:
    """Requests answered since the counters were (parts0, busy0): replies in parts, and busy refusals."""
    counters = c.status()["counters"]
    return ((counters.get("control.reply_parts", 0) - parts0) // per_reply
            + counters.get("control.reply_busy", 0) - busy0)


def test_unread_replies_stay_within_the_budget_and_the_sdk_retries_busy(isolated_env: Path, tmp_path: Path) -> None:
    """Fresh daemon (it asserts on counters and its own RSS), budget 8 MiB. 40 clients that never read each ask
    twice for a ~2 MB page of events (in parts): the daemon's RSS grows by well under the ~215 MB those replies
    are (before: all of it, held until the clients went away); the requests past the budget, and a reading
    client's, get ``busy`` with ``{bytes, in_flight, max}`` and are counted ``control.reply_busy``. An SDK request
    made meanwhile retries and gets the whole page once the hogs close (before: no ``busy`` at all; with the
    daemon's budget but not the SDK's retry, it raised ``busy`` at once)."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text(
        f'[daemon]\nmax_message = {MAX_MESSAGE}\nmax_unread_replies = "{BUDGET // MIB}M"\n')
    (tmp_path / "chatty.py").write_text(FLOW)
    with running_daemon(isolated_env) as d, d.client(timeout=60) as c:
        sid = c.start(str(tmp_path / "chatty.py"), cwd=str(tmp_path))
        assert c.wait(sid, timeout=60)["status"] == "completed"
        parts0 = c.status()["counters"].get("control.reply_parts", 0)  # c.wait may have read pages in parts
        page = c.events(sid, kinds=["custom"])  # warm-up: the read's own allocations are in the baseline
        assert len(page["events"]) == 200
        counters = c.status()["counters"]
        parts0, per_reply = counters["control.reply_parts"], counters["control.reply_parts"] - parts0
        busy0 = counters.get("control.reply_busy", 0)
        assert per_reply >= 2  # the page came in parts
        daemon = psutil.Process(d.proc.pid)  # type: ignore[union-attr]
        before = daemon.memory_info().rss

        ctx = zmq.Context()
        codec = Codec(c.info.key_bytes, max_message=MAX_MESSAGE)
        hogs = [_hog(ctx, c.info.control) for _ in range(HOGS)]
        try:
            for hog in hogs:
                for _ in range(ASKS):
                    hog.send_multipart(codec.pack("events.query", {"session": sid, "kinds": ["custom"]}, parts=True))
            try:
                wait_until(lambda: _answered(c, parts0, per_reply, busy0) >= HOGS * ASKS, timeout=60,
                           interval=0.2, what="every hog's request answered or refused")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; {per_reply} parts a reply; counters {c.status()['counters']}") from None
            grown = daemon.memory_info().rss - before
            busy = c.status()["counters"]["control.reply_busy"] - busy0
            assert busy >= HOGS * ASKS // 2, busy  # most were refused: only ~3 replies of ~2.7 MB fit 8 MiB
            assert grown < BUDGET + 48 * MIB, f"the daemon's RSS grew by {grown / MIB:.0f} MiB"

            # a client that reads is told why, with the figures
            reader = ctx.socket(zmq.DEALER)
            reader.setsockopt(zmq.LINGER, 0)
            reader.connect(c.info.control)
            reader.send_multipart(codec.pack("events.query", {"session": sid, "kinds": ["custom"]}, parts=True))
            assert reader.poll(10_000), "no reply"
            error = codec.unpack(reader.recv_multipart()).body["error"]
            assert error["code"] == "busy" and "have not read" in error["message"], error
            details = error["details"]
            assert details["max"] == BUDGET and details["in_flight"] + details["bytes"] > BUDGET, details
            assert details["in_flight"] <= BUDGET + 4 * MIB  # within budget + the one reply let in on an empty one
            reader.close(0)

            # the SDK retries while the daemon stays saturated, and gets the page once the hogs are gone
            got: dict[str, Any] = {}

            def sdk_request() -> None:
                with d.client(timeout=30) as other:
                    try:
                        got["page"] = other.events(sid, kinds=["custom"])
                    except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                        got["error"] = exc

            refused = c.status()["counters"]["control.reply_busy"]
            worker = threading.Thread(target=sdk_request)
            worker.start()
            wait_until(lambda: c.status()["counters"]["control.reply_busy"] >= refused + 2 or got, timeout=20,
                       what="the SDK's request refused busy, twice")
            assert not got, got  # still retrying
        finally:
            for hog in hogs:
                hog.close(0)
        worker.join(30)
        assert "page" in got, got
        assert [e["payload"]["data"]["i"] for e in got["page"]["events"]] == list(range(200))
        ctx.term()
