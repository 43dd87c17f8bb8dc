"""What one request or one session may make large, bounded: failure texts and params in session lists, NaN and
Infinity in requests, and requests over the daemon's message limit (each found by a security review)."""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
import pytest
import zmq

from labd.daemon.api.sessions import LIST_PARAMS_MAX
from labd.ipc import LabdError
from labd.ipc.wire import Codec
from labd.store.projections import MAX_REASON
from tests.conftest import SMALL_MAX_MESSAGE as MAX_MESSAGE

CUT = MAX_REASON + len("… (1000000 more)")  # the longest a cut text is


def _ids(c: Any, **kw: Any) -> set[str]:
    """The ids of the daemon's sessions (the module's shared daemon: other tests' sessions are there too)."""
    return {r["id"] for r in c.sessions(limit=1000, **kw)}


def test_failures_with_huge_messages_leave_session_list_answerable(daemon) -> None:
    """Seven sessions of demo.fail whose 900,000-character message became their failure reason, outcome error and
    param: `session.list` still answers (before: every row carried all three whole, 2.7 MB a row, and every list
    failed with reply_too_large). A list row's reason and outcome_error are cut to 10,000 characters saying how
    many more there were, its params leave the large one out (`params_omitted`: 1); `session.get` has the whole
    params, and the session.finished event the whole error. (A daemon of its own: the list is all seven.)"""
    message = "m" * 900_000
    with daemon.client(timeout=60) as c:
        sids = [c.start("demo.fail", params={"message": message}) for _ in range(7)]
        for sid in sids:
            assert c.wait(sid, timeout=120)["status"] == "failed"
        rows = c.sessions()
        assert sorted(r["id"] for r in rows) == sorted(sids)
        error = f"RuntimeError: {message}"
        for row in rows:
            assert row["reason"] == f"workflow failed: {error}"[:MAX_REASON] + \
                f"… ({len('workflow failed: ') + len(error) - MAX_REASON} more)"
            assert row["outcome_error"] == error[:MAX_REASON] + f"… ({len(error) - MAX_REASON} more)"
            assert row["params"] == {} and row["params_omitted"] == 1
        one = c.session(sids[0])
        assert one["params"] == {"message": message} and "params_omitted" not in one
        assert one["reason"] == rows[0]["reason"]
        assert all(len(h["reason"] or "") <= CUT for h in one["history"])
        finished = c.events(sids[0], kinds=["session.finished"])["events"][0]
        assert finished["payload"]["error"] == error


def test_list_rows_keep_small_params_and_name_how_many_were_left_out(shared_daemon) -> None:
    """A list row carries params whose JSON fits in LIST_PARAMS_MAX bytes whole; of larger ones, those that fit, in
    order (a big one is left out, the small ones after it kept) and `params_omitted` says how many went; `labd ps`
    still labels a submitted function by its name (its `function` param)."""
    from labd.frontends.cli.listing import workflow_label
    from labd.ipc.functions import FUNCTION_WORKFLOW

    with shared_daemon.client() as c:
        small = c.start("demo.count", params={"n": 1, "delay": 0, "label": "x" * 100})
        big = c.start("demo.count", params={"label": "y" * (2 * LIST_PARAMS_MAX), "n": 1, "delay": 0})
        fn = c.submit(math.sqrt, 4.0)
        for sid in (small, big, fn):
            c.wait(sid, timeout=60)
        rows = {r["id"]: r for r in c.sessions()}
        assert rows[small]["params"] == {"n": 1, "delay": 0, "label": "x" * 100}
        assert "params_omitted" not in rows[small]
        assert rows[big]["params"] == {"n": 1, "delay": 0} and rows[big]["params_omitted"] == 1
        assert c.session(big)["params"]["label"] == "y" * (2 * LIST_PARAMS_MAX)
        assert rows[fn]["workflow"] == FUNCTION_WORKFLOW and workflow_label(rows[fn]) == "math.sqrt (submitted)"
        assert all(len(orjson.dumps(r["params"])) <= LIST_PARAMS_MAX for r in rows.values())


def test_a_non_finite_limit_is_refused_before_it_is_sent(shared_daemon) -> None:
    """`budget=float("nan")` (or Infinity, or a NaN/Infinity memory, timeout, cpu) is refused by the SDK with
    `bad_limits` naming the field, and no session starts. Before: orjson sent it as null, the daemon read "no
    budget" and started the session unlimited, past its own isfinite check."""
    cases = [({"budget": float("nan")}, "limits.budget"), ({"budget": float("inf")}, "limits.budget"),
             ({"timeout": float("nan")}, "limits.timeout"), ({"cpu": float("-inf")}, "limits.cpu"),
             ({"memory": float("inf")}, "limits.memory")]
    with shared_daemon.client() as c:
        before = _ids(c)
        for limits, field in cases:
            with pytest.raises(LabdError) as err:
                c.start("demo.count", params={"n": 1, "delay": 0}, **limits)
            assert err.value.code == "bad_limits" and err.value.details == {"field": field}, err.value
            assert "finite" in err.value.message
        assert _ids(c) == before
        sid = c.start("demo.count", params={"n": 1, "delay": 0}, budget=0.5)  # a finite one still goes through
        assert c.session(sid)["limits"]["budget"] == 0.5


def test_a_non_finite_number_anywhere_in_a_request_is_refused(shared_daemon) -> None:
    """NaN or Infinity anywhere else in a request (a param, a nested value) is `bad_request` naming where it is,
    sent nowhere; the same request with finite numbers and nulls goes through."""
    with shared_daemon.client() as c:
        before = _ids(c)
        with pytest.raises(LabdError) as err:
            c.start("labd_testflows:needs_param", params={"count": [1.0, {"x": float("nan")}]})
        assert err.value.code == "bad_request" and err.value.details == {"field": "params.count[1].x"}
        with pytest.raises(LabdError) as err:
            c.request("session.list", since=float("inf"))
        assert err.value.code == "bad_request" and err.value.details == {"field": "since"}
        assert _ids(c) == before and _ids(c, status=None, workflow=None) == before


def test_a_request_over_the_message_limit_is_refused_at_once_by_the_sdk(small_daemon) -> None:
    """A `session.start` whose `name` is 200 KB, with a daemon whose max_message is 64 KiB (which the client reads
    from the connection file): `request_too_large` with the sizes at once, nothing sent, nothing started. Before:
    libzmq cut the connection (over twice max_message) or the daemon dropped the frame, and the client retried
    until its timeout (30 s for a 50 MB name)."""
    with small_daemon.client(timeout=5) as c:
        assert c.max_request == MAX_MESSAGE
        started = time.monotonic()
        with pytest.raises(LabdError) as err:
            c.start("demo.count", name="n" * 200_000, params={"n": 1})
        assert time.monotonic() - started < 1.0
        assert err.value.code == "request_too_large", err.value
        assert err.value.details["max"] == MAX_MESSAGE < err.value.details["bytes"]
        with pytest.raises(LabdError) as err:
            c.start("demo.count", params={"n": 1, "label": "l" * MAX_MESSAGE})  # just over: the daemon would say so
        assert err.value.code == "request_too_large"
        assert c.sessions() == [] and c.ping()["pid"] == small_daemon.proc.pid


def test_the_daemon_answers_a_signed_request_over_its_limit_with_request_too_large(small_daemon) -> None:
    """A client that does not check (another language, an old SDK) sends a signed request over max_message (but
    under twice it, which libzmq would cut off): the daemon answers `request_too_large` (sizes in `details`) to that
    request's id, read from the frame's first bytes without decoding it, and counts it as dropped. The same frame
    unsigned gets no answer at all."""
    with small_daemon.client() as c:
        codec = Codec(c.info.key_bytes, max_message=MAX_MESSAGE)
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(c.info.control)
        try:
            frames = codec.pack("session.start", {"workflow": "demo.count", "name": "n" * (MAX_MESSAGE + 100)})
            s.send_multipart([b"0" * 64, frames[1]])
            assert not s.poll(500), "an unsigned oversized frame was answered"
            s.send_multipart(frames)
            assert s.poll(5000), "no answer to a signed oversized request"
            reply = codec.unpack(s.recv_multipart())
            assert reply.re == orjson.loads(frames[1])["id"] and reply.body["ok"] is False
            error = reply.body["error"]
            assert error["code"] == "request_too_large", error
            assert error["details"] == {"bytes": len(frames[1]), "max": MAX_MESSAGE}
        finally:
            s.close(0)
        assert c.status()["counters"]["dropped.control.oversized"] == 2
        assert c.sessions() == []


@pytest.fixture(scope="module")
def thousands(module_daemon) -> str:
    """A finished session of 2,500 steps with long names, on the module's daemon."""
    with module_daemon.client() as c:
        sid = c.start("demo.count", params={"n": 2500, "delay": 0, "label": "x" * 200})
        assert c.wait(sid, timeout=120)["status"] == "completed"
    return sid


def test_a_session_with_thousands_of_nodes_can_still_be_shown(shared_daemon, thousands: str) -> None:
    """A session of 2,500 steps with long names: `session.get` (labd show, the dashboard's page, MCP get_session)
    carries the newest 2,000 nodes and says how many older ones it left out (all of them had made the reply too
    large for a long session); `steps_limit` asks for a different number; `labd show` says where the rest are."""
    import subprocess
    import sys

    daemon, sid = shared_daemon, thousands
    with daemon.client() as c:
        s = c.session(sid)
        assert len(s["steps"]) == 2000 and s["steps_omitted"] == 500
        assert s["steps"][-1]["name"] == "x" * 200 + " 2500"  # the newest kept
        few = c.request("session.get", session=sid, steps_limit=10)["session"]
        assert len(few["steps"]) == 10 and few["steps_omitted"] == 2490
        with pytest.raises(LabdError) as bad:
            c.request("session.get", session=sid, steps_limit=-1)
        assert bad.value.code == "bad_request"
    shown = subprocess.run([sys.executable, "-m", "labd", "--home", str(daemon.home), "show", sid],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"500 earlier ones are in `labd dag {sid}`" in shown.stdout


@pytest.mark.parametrize(("request_type", "extra"), [("session.dag", {}), ("session.dag", {"format": "mermaid"}),
                                                     ("session.cost", {}), ("session.checkpoints", {}),
                                                     ("session.files", {}), ("skill.save", {"name": "thousands"})])
def test_a_whole_record_read_of_a_long_session_leaves_the_daemon_answering(shared_daemon, thousands: str,
                                                                           request_type: str, extra: dict) -> None:
    """A read of a session's whole DAG, costs, checkpoints or files (or the extraction of a skill from it) runs on
    the daemon's read worker: while it runs, other clients are answered (here `daemon.status`, which counts it among
    its `long_reads`). On the request loop such a read of a 30,000-step session held every client for more than a
    second (the DAG: 1.3 s); a dashboard showing a long session's DAG kept the daemon busy. The reply is the same."""
    import threading

    done: dict[str, Any] = {}

    def read() -> None:
        with shared_daemon.client(timeout=60) as other:
            done["reply"] = other.request(request_type, session=thousands, **extra)

    reader = threading.Thread(target=read)
    seen = 0
    with shared_daemon.client() as c:
        before = c.request("daemon.status")["counters"].get("reads.long", 0)
        reader.start()
        while reader.is_alive():
            seen = max(seen, c.request("daemon.status")["long_reads"])
        reader.join()
        # counted when handed to a worker: a read that is over before the first status (the files of a session
        # without any) shows there only; the others are seen running while this client is answered
        assert c.request("daemon.status")["counters"]["reads.long"] == before + 1, "the read ran on the loop"
        assert seen >= 1 or request_type == "session.files"
        assert c.request("daemon.status")["long_reads"] == 0
    reply = done["reply"]
    if request_type == "skill.save":  # extracted on the worker, then written
        with shared_daemon.client() as c:
            saved = c.request("skill.get", name="thousands")["skill"]
        assert reply["name"] == "thousands" and len(saved["steps"]) == 2500
        return
    assert reply["session"] == thousands
    if request_type == "session.dag":
        if "format" in extra:  # the rendering alone
            assert reply["dag"] is None and reply["text"].count(" 2500") >= 1
        else:  # the graph, once
            assert reply["text"] is None and len(reply["dag"]["nodes"]) == 2500
    elif request_type == "session.checkpoints":
        assert len(reply["checkpoints"]) == 2500
    elif request_type == "session.cost":
        assert len(reply["by_step"]) == 2500 and reply["budget"] is None
    else:
        assert reply["workdir"] and isinstance(reply["files"], list)
