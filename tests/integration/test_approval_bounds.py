"""Approval requests are bounded (labd.ipc.events ``APPROVAL_*``): an approval is never dropped or counted against the
output cap (the workflow waits for its answer), so its size is bounded instead. A workflow asking beyond a bound fails
at once with an error naming it; a runner that writes the frame itself gets ``event.rejected`` and no pending
approval; an approval too large for one message fails instead of waiting forever; one at the bounds works end to end;
the list never loads an old row's oversized options. (An attack review: 30 approvals with 10 MiB prompts added
682 MiB to a database capped at 1 MiB of output; 20 of 250,000 options took the daemon from 383 to 1,570 MiB.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import insert

from labd.ipc import Client, LabdError
from labd.ipc.events import (
    APPROVAL_CONTEXT_MAX,
    APPROVAL_KIND_MAX,
    APPROVAL_OPTION_MAX,
    APPROVAL_OPTIONS_MAX,
    APPROVAL_PROMPT_MAX,
    APPROVALS_PENDING_MAX,
    EventError,
    validate,
)
from tests.conftest import SMALL_MAX_MESSAGE, DaemonProc, wait_until
from tests.integration.impostor import impostor_runner


@pytest.fixture
def client(shared_daemon: DaemonProc) -> Iterator[Client]:
    """A client of the module's shared daemon (its tests assert only on their own sessions)."""
    with shared_daemon.client() as c:
        yield c


# ---- the workflows (module-level functions, sent with Client.submit) ---------------------------------------------
def _ask(kind_len: int = 6, prompt_len: int = 10, n_opts: int = 2, opt_len: int = 5, ctx_len: int = 0,
         answer: bool = False) -> Any:
    """One approval with fields of the given sizes; returns its decision (``answer``) or asks and waits."""
    import labd

    ctx = labd.context()
    options = [f"{j:03d}".ljust(opt_len, "o") for j in range(n_opts)]
    context = {"c": "x" * ctx_len} if ctx_len else None
    decision = ctx.approval("k" * kind_len, "p" * prompt_len, options=options, context=context, timeout=3600)
    return decision.decision if answer else None


def _at_the_bounds() -> str:
    """An approval with every field at its bound: kind, prompt, 100 options of 40 characters, 64 KiB of context."""
    import labd

    ctx = labd.context()
    options = [f"{j:03d}".ljust(APPROVAL_OPTION_MAX, "o") for j in range(APPROVAL_OPTIONS_MAX)]
    context = {"c": "x" * (APPROVAL_CONTEXT_MAX - len('{"c":""}'))}  # exactly APPROVAL_CONTEXT_MAX bytes of JSON
    decision = ctx.approval("k" * APPROVAL_KIND_MAX, "p" * APPROVAL_PROMPT_MAX, options=options, context=context,
                            timeout=3600)
    return decision.decision


def _payload(**over: Any) -> dict[str, Any]:
    base = {"approval_id": "ap-0123456789abcdef", "kind": "review", "prompt": "ok?", "options": ["approve", "reject"],
            "context": None, "policy": "reject"}
    return {**base, **over}


OVERSIZED = {  # what is over which bound: (the workflow's sizes, the bound its error names)
    "prompt": ({"prompt_len": APPROVAL_PROMPT_MAX + 1}, f"prompt must be at most {APPROVAL_PROMPT_MAX:,} characters"),
    "kind": ({"kind_len": APPROVAL_KIND_MAX + 1}, f"kind must be at most {APPROVAL_KIND_MAX} characters"),
    "options": ({"n_opts": APPROVAL_OPTIONS_MAX + 1}, f"options must be 1-{APPROVAL_OPTIONS_MAX} strings"),
    "option": ({"opt_len": APPROVAL_OPTION_MAX + 1}, f"each option must be a string of 1-{APPROVAL_OPTION_MAX}"),
    "context": ({"ctx_len": APPROVAL_CONTEXT_MAX}, f"context must be at most {APPROVAL_CONTEXT_MAX:,} bytes"),
}


# ---- tests -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("what", list(OVERSIZED))
def test_an_oversized_approval_fails_the_workflow_at_once_naming_the_bound(client: Client, what: str) -> None:
    """A workflow asking an approval with a prompt, kind, options list, option or context beyond its bound fails at
    once (ValueError in the workflow, not a wait for an answer that never comes), with an error naming the bound;
    nothing was asked: no approval.requested event, no approval row (pending or otherwise)."""
    sizes, bound = OVERSIZED[what]
    sid = client.submit(_ask, **sizes)
    final = client.wait(sid, timeout=60)
    assert final["status"] == "failed"
    finished = next(client.history(sid, kinds=["session.finished"]))["payload"]
    assert bound in finished["error"] and "EventError" in finished["error"]
    assert not list(client.history(sid, kinds=["approval.requested"]))
    assert client.approvals(sid, status="all") == []


def test_a_runner_frame_with_an_oversized_approval_is_rejected_and_leaves_nothing_pending(client: Client) -> None:
    """A runner that writes its frames itself cannot get past the bounds: each oversized approval.requested (prompt,
    kind, too many options, a long option, context, a huge extra field) is stored as event.rejected naming the bound,
    in its own src_seq slot, and leaves no approval row; a valid request in the same frame is recorded as pending."""
    sid, codec, s = impostor_runner(client)
    try:
        nxt = len([e for e in client.history(sid) if e["src"] == "runner"]) + 1
        bad = [
            _payload(approval_id="ap-a", prompt="p" * (APPROVAL_PROMPT_MAX + 1)),
            _payload(approval_id="ap-b", kind="k" * (APPROVAL_KIND_MAX + 1)),
            _payload(approval_id="ap-c", options=[f"o{j}" for j in range(250_000)]),
            _payload(approval_id="ap-d", options=["o" * (APPROVAL_OPTION_MAX + 1)]),
            _payload(approval_id="ap-e", context={"c": "x" * APPROVAL_CONTEXT_MAX}),
            _payload(approval_id="ap-f", agent="a" * 2**21),
        ]
        good = _payload(approval_id="ap-good")
        evs = [[nxt + i, time.time(), "approval.requested", None, None, p] for i, p in enumerate([*bad, good])]
        s.send_multipart(codec.pack("events", {"session": sid, "events": evs}))
        acks: list[dict[str, Any]] = []
        wait_until(lambda: s.poll(100) and acks.append(codec.unpack(s.recv_multipart()).body)
                   or any(a.get("next") == nxt + len(evs) for a in acks), timeout=30, what="ack")
        tail = [e for e in client.history(sid) if e["src"] == "runner"][-len(evs):]
        assert [e["kind"] for e in tail] == ["event.rejected"] * len(bad) + ["approval.requested"]
        reasons = [e["payload"]["reason"] for e in tail[:-1]]
        for reason, bound in zip(reasons, ["prompt must be at most", "kind must be at most", "options must be 1-100",
                                           "each option must be", "context must be at most",
                                           "payload must be at most"], strict=True):
            assert bound in reason
        assert [a["id"] for a in client.approvals(sid, status="all")] == ["ap-good"]
    finally:
        s.close(0)


def test_a_runner_frame_past_the_pending_approvals_bound_is_rejected(client: Client) -> None:
    """A runner that writes its frames itself and never waits cannot pile up approvals: of APPROVALS_PENDING_MAX + 2
    valid requests, the first APPROVALS_PENDING_MAX are recorded pending, the rest are stored as event.rejected
    naming the bound (each in its own src_seq slot), and no approval row is made for them."""
    sid, codec, s = impostor_runner(client)
    try:
        nxt = len([e for e in client.history(sid) if e["src"] == "runner"]) + 1
        n = APPROVALS_PENDING_MAX + 2
        evs = [[nxt + i, time.time(), "approval.requested", None, None, _payload(approval_id=f"ap-{i:016x}")]
               for i in range(n)]
        s.send_multipart(codec.pack("events", {"session": sid, "events": evs}))
        acks: list[dict[str, Any]] = []
        wait_until(lambda: s.poll(100) and acks.append(codec.unpack(s.recv_multipart()).body)
                   or any(a.get("next") == nxt + n for a in acks), timeout=60, what="ack")
        tail = [e for e in client.history(sid) if e["src"] == "runner"][-n:]
        assert [e["kind"] for e in tail] == ["approval.requested"] * APPROVALS_PENDING_MAX + ["event.rejected"] * 2
        assert all(f"{APPROVALS_PENDING_MAX} approvals pending already" in e["payload"]["reason"] for e in tail[-2:])
        ids: list[str] = []
        while True:  # paged, 500 at most at a time
            page = client.approvals(sid, status="all", after=ids[-1] if ids else None, limit=500)
            if not page:
                break
            ids += [a["id"] for a in page]
        assert sorted(ids) == [f"ap-{i:016x}" for i in range(APPROVALS_PENDING_MAX)]
    finally:
        s.close(0)


def test_a_valid_approval_at_the_bounds_works_end_to_end(client: Client) -> None:
    """An approval with every field at its bound (40-character kind, 100,000-character prompt, 100 options of 40
    characters, 64 KiB of context) is asked, listed (prompt cut to 2,000, options whole), shown whole with ``full``,
    answered with its last option, and the workflow gets that answer."""
    sid = client.submit(_at_the_bounds)
    ap = wait_until(lambda: client.approvals(sid), timeout=60, what="the approval")[0]
    last = f"{APPROVAL_OPTIONS_MAX - 1:03d}".ljust(APPROVAL_OPTION_MAX, "o")
    assert ap["kind"] == "k" * APPROVAL_KIND_MAX and len(ap["options"]) == APPROVAL_OPTIONS_MAX
    assert ap["truncated"] and ap["prompt_length"] == APPROVAL_PROMPT_MAX
    whole = client.approvals(sid, full=True)[0]
    assert whole["prompt"] == "p" * APPROVAL_PROMPT_MAX
    assert len(orjson.dumps(whole["context"])) == APPROVAL_CONTEXT_MAX
    client.resolve(sid, last)
    assert client.result(sid, timeout=60) == last
    assert client.session(sid)["status"] == "completed"


def test_an_approval_too_large_for_one_message_fails_instead_of_waiting(small_daemon: DaemonProc) -> None:
    """Under a small message limit (64 KiB) an approval within the bounds can still be too large for one event: the
    runner would send only an event.truncated marker and the workflow would wait forever. It raises at once instead,
    saying why; nothing is pending."""
    with small_daemon.client() as c:
        sid = c.submit(_ask, prompt_len=SMALL_MAX_MESSAGE + 1000)
        final = c.wait(sid, timeout=30)
        assert final["status"] == "failed"
        error = next(c.history(sid, kinds=["session.finished"]))["payload"]["error"]
        assert "cannot be asked" in error and "too large" in error
        assert not list(c.history(sid, kinds=["approval.requested", "event.truncated"]))
        assert c.approvals(sid, status="all") == []


def test_the_bounds_are_one_check_for_runner_and_daemon() -> None:
    """labd.ipc.events.validate (what ctx.approval and ingest both call) accepts every field at its bound and refuses
    one past it, naming the bound; options must be strings and policy one of approve, reject, fail."""
    at = _payload(kind="k" * APPROVAL_KIND_MAX, prompt="\x01" * APPROVAL_PROMPT_MAX,  # escapes: 6 bytes a character
                  options=["o" * APPROVAL_OPTION_MAX] * APPROVAL_OPTIONS_MAX,
                  context={"c": "x" * (APPROVAL_CONTEXT_MAX - len('{"c":""}'))}, agent="a" * 200, timeout=60.0)
    validate("approval.requested", at)
    for over, bound in [({"prompt": "p" * (APPROVAL_PROMPT_MAX + 1)}, "prompt must be at most 100,000"),
                        ({"kind": "k" * (APPROVAL_KIND_MAX + 1)}, "kind must be at most 40"),
                        ({"options": ["o"] * (APPROVAL_OPTIONS_MAX + 1)}, "options must be 1-100"),
                        ({"options": []}, "options must be 1-100"),
                        ({"options": ["o" * (APPROVAL_OPTION_MAX + 1)]}, "1-40 characters"),
                        ({"options": [7]}, "type int"),
                        ({"context": {"c": "x" * APPROVAL_CONTEXT_MAX}}, "context must be at most 65,536 bytes"),
                        ({"policy": "maybe"}, "policy must be approve, reject or fail"),
                        ({"approval_id": "a" * 41}, "approval_id must be 1-40"),
                        ({"extra": "x" * 2**20}, "payload must be at most 1,048,576 bytes")]:
        with pytest.raises(EventError, match=bound):
            validate("approval.requested", {**at, **over})


def test_listing_never_loads_an_old_rows_oversized_options(tmp_path: Path) -> None:
    """A row recorded before the bounds with 250,000 options is listed (a bounded read: approvals.list, the daemon's
    own reads) without its options (an empty list, ``truncated``); a full read still has them all."""
    from labd.store.db import migrate, open_engine
    from labd.store.queries import Store
    from labd.store.schema import approvals

    eng = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    try:
        migrate(eng)
        row = {"session_id": "s1", "kind": "k", "prompt": "p", "context": "null", "status": "pending",
               "requested_at": 1.0}
        with eng.begin() as conn:
            conn.execute(insert(approvals), [
                {**row, "id": "ap-old", "options": orjson.dumps([f"o{j}" for j in range(250_000)]).decode()},
                {**row, "id": "ap-new", "options": orjson.dumps(["approve", "reject"]).decode(), "requested_at": 2.0}])
        store = Store(eng)
        old, new = store.approvals(bound=(2000, 4000))
        assert (old["id"], old["options"], old["truncated"]) == ("ap-old", [], True)
        assert (new["id"], new["options"], new["truncated"]) == ("ap-new", ["approve", "reject"], False)
        assert len(store.approvals(ids=["ap-old"])[0]["options"]) == 250_000
    finally:
        eng.dispose()


@pytest.mark.parametrize("session", [0, "", False, ["x"]])
def test_a_session_field_of_the_wrong_kind_is_refused_not_read_as_every_session(client: Client, session: Any) -> None:
    """``approvals.list`` with ``session: 0`` (or ``""``) is ``bad_request``; it was read as "every session's
    approvals", against the protocol's rule that a field of the wrong type is refused (protocol review)."""
    with pytest.raises(LabdError) as refused:
        client.request("approvals.list", session=session)
    assert refused.value.code == "bad_request" and "session" in refused.value.message
