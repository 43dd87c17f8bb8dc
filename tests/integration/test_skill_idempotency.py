"""Idempotent skill saves and imports: a retried ``skill.save`` or ``skill.import`` (same idempotency key) never
stores a second version, also when the retry comes while the first is in flight, after the client gave up on its
reply, or after a daemon restart. Before, a save whose reply was lost (a timeout) and was run again stored the skill
twice, as versions 1 and 2 (the note of 2026-12-06: "skill saves take no idempotency key")."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from labd.ipc import Client, LabdError
from tests.conftest import DaemonProc, running_daemon, wait_until

pytestmark = pytest.mark.timeout(180)


def _completed(c: Any) -> str:
    sid = c.start("demo.count", params={"n": 1, "delay": 0})
    assert c.wait(sid, timeout=60)["status"] == "completed"
    return str(sid)


def test_a_save_sent_twice_with_one_key_is_one_version(shared_daemon: DaemonProc) -> None:
    """The second ``skill.save`` with the same key answers the first one's version (``replayed``) and stores
    nothing: the next save (another key) is version 2, never 3. The key is not part of the skill's document."""
    with shared_daemon.client(timeout=60) as c:
        sid = _completed(c)
        body = {"session": sid, "name": "keyed-save", "parameters": ["n"], "idempotency_key": "save-1"}
        first = c.request("skill.save", **body)
        again = c.request("skill.save", **body)
        assert first == {"name": "keyed-save", "version": 1}
        assert again == {"name": "keyed-save", "version": 1, "replayed": True}
        assert c.save_skill(sid, "keyed-save", parameters=["n"])["version"] == 2  # the SDK's own fresh key
        doc = c.skill("keyed-save", version=1)["skill"]
        assert "idempotency_key" not in doc and "request_digest" not in doc and doc["parameters"] == ["n"]


def test_the_sdk_takes_what_skill_gives_and_one_parameter_name(shared_daemon: DaemonProc) -> None:
    """``import_skill(c.skill(name))`` stores a copy, as its docstring says (the ``{skill, reuses}`` reply was refused:
    ``field 'reuses' must be absent``), and ``save_skill(..., parameters="n")`` asks for the parameter ``n`` (the
    string was split into its characters)."""
    with shared_daemon.client(timeout=60) as c:
        sid = _completed(c)
        assert c.save_skill(sid, "one-param", parameters="n")["version"] == 1
        got = c.skill("one-param")
        assert got["skill"]["parameters"] == ["n"]
        assert c.import_skill(got, "one-param-copy") == {"name": "one-param-copy", "version": 1}
        assert c.skill("one-param-copy")["skill"]["parameters"] == ["n"]


def test_saves_sent_back_to_back_with_one_key_store_one_version(shared_daemon: DaemonProc) -> None:
    """Four identical saves sent at once, each retry before the first is written (each is read from the session's
    record on a read worker, then written by the one writer): one version, three of the four answers ``replayed``."""
    with shared_daemon.client(timeout=60) as c:
        sid = _completed(c)
        body = {"session": sid, "name": "burst-save", "idempotency_key": "burst-save"}
        for _ in range(4):
            c._sock.send_multipart(c._codec.pack("skill.save", body))
        replies = []
        while len(replies) < 4:
            assert c._sock.poll(60_000), "no reply"
            replies.append(c._codec.unpack(c._sock.recv_multipart()).body)
            assert replies[-1]["ok"], replies
        assert {r["result"]["version"] for r in replies} == {1}
        assert sum(1 for r in replies if r["result"].get("replayed")) == 3
        assert c.save_skill(sid, "burst-save")["version"] == 2


class _Counting(Client):
    """A client that counts the requests of each type it sent (each retry is one)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.sent: dict[str, int] = {}

    def request(self, type_: str, **body: Any) -> Any:
        self.sent[type_] = self.sent.get(type_, 0) + 1
        return super().request(type_, **body)


def _retried_while_stopped(daemon: DaemonProc, call: Callable[[_Counting], dict[str, Any]],
                           type_: str) -> dict[str, Any]:
    """``call`` with a client on a 1 s timeout while the daemon is stopped (SIGSTOP): once the client gave up on its
    first attempt and sent the same request again, the daemon goes on and gets both. Returns what ``call`` got."""
    got: dict[str, Any] = {}
    with _Counting(daemon.home, timeout=1.0) as hasty:
        hasty.ping()  # connected while the daemon answers
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        try:
            worker = threading.Thread(target=lambda: got.update(call(hasty)), daemon=True)
            worker.start()
            wait_until(lambda: hasty.sent.get(type_, 0) >= 2, timeout=30, what="the client's retry")
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        worker.join(60)
    assert not worker.is_alive() and got, "the retried request got no answer"
    return got


def test_the_sdk_retries_a_save_whose_reply_did_not_come_and_stores_it_once(shared_daemon: DaemonProc) -> None:
    """The issue's case: the daemon does not answer in time (stopped), the SDK gives up on the save and sends it
    again with its key; once the daemon goes on it gets both attempts and stores the skill once: the answer is
    version 1, and the next save is version 2. The same for an import. Without the key the first attempt stored
    version 1 and the retry version 2 (fails before: the answer was version 2)."""
    with shared_daemon.client(timeout=60) as c:
        sid = _completed(c)
    saved = _retried_while_stopped(shared_daemon, lambda h: h.save_skill(sid, "hasty-save", retries=20),
                                   "skill.save")
    assert saved["name"] == "hasty-save" and saved["version"] == 1, saved
    with shared_daemon.client(timeout=60) as c:
        assert c.save_skill(sid, "hasty-save")["version"] == 2
        doc = c.skill("hasty-save", version=1)["skill"]
    imported = _retried_while_stopped(shared_daemon, lambda h: h.import_skill(doc, "hasty-import", retries=20),
                                      "skill.import")
    assert imported["version"] == 1, imported
    with shared_daemon.client(timeout=60) as c:
        assert c.import_skill(doc, "hasty-import")["version"] == 2


def test_a_key_used_again_for_another_request_is_refused(shared_daemon: DaemonProc) -> None:
    """A key sent again with another name, other parameters, or for an import is a client bug: refused with
    ``idempotency_conflict`` naming the skill the key stored, and nothing stored (not silently answered with a skill
    that is something else). A malformed key is ``bad_request``."""
    with shared_daemon.client(timeout=60) as c:
        sid = _completed(c)
        first = c.save_skill(sid, "conflict-a", idempotency_key="reused")
        for other in ({"name": "conflict-b"}, {"name": "conflict-a", "parameters": ["n"]},
                      {"name": "conflict-a", "description": "else"}):
            with pytest.raises(LabdError) as err:
                c.request("skill.save", session=sid, idempotency_key="reused", **other)
            assert err.value.code == "idempotency_conflict", other
            assert err.value.details == {"name": "conflict-a", "version": first["version"]}
        doc = c.skill("conflict-a")["skill"]
        with pytest.raises(LabdError) as err:
            c.import_skill(doc, "conflict-c", idempotency_key="reused")
        assert err.value.code == "idempotency_conflict"
        for gone in ("conflict-b", "conflict-c"):
            with pytest.raises(LabdError) as err:
                c.skill(gone)
            assert err.value.code == "not_found"
        assert c.save_skill(sid, "conflict-a")["version"] == first["version"] + 1
        with pytest.raises(LabdError) as err:  # a misspelt key was ignored: a retry stored a second version
            c.request("skill.import", document=doc, name="conflict-d", idempotency_kye="typo")
        assert err.value.code == "bad_request" and err.value.details == {"field": "idempotency_kye"}
        for bad in ("", "x" * 201, "tab\there"):
            with pytest.raises(LabdError) as err:
                c.request("skill.save", session=sid, name="conflict-a", idempotency_key=bad)
            assert err.value.code == "bad_request" and "idempotency_key" in err.value.message


def test_a_retry_is_answered_after_its_session_was_deleted(shared_daemon: DaemonProc) -> None:
    """The key is looked up before the session is: a retry whose session was deleted meanwhile (or whose session's
    name now names a newer one) gets the version it stored, not ``not_found`` or ``idempotency_conflict`` (review
    helper-148)."""
    with shared_daemon.client(timeout=60) as c:
        sid = c.start("demo.count", name="renamed-later", params={"n": 1, "delay": 0})
        assert c.wait(sid, timeout=60)["status"] == "completed"
        by_name = {"session": "renamed-later", "name": "after-rm", "idempotency_key": "after-rm"}
        assert c.request("skill.save", **by_name)["version"] == 1
        c.rm(sid)
        assert c.request("skill.save", **by_name) == {"name": "after-rm", "version": 1, "replayed": True}
        newer = c.start("demo.count", name="renamed-later", params={"n": 1, "delay": 0})
        c.wait(newer, timeout=60)
        assert c.request("skill.save", **by_name)["replayed"] is True


def test_a_save_key_outlives_a_daemon_restart(isolated_env: Path) -> None:
    """Keys are stored with the version they saved: after a daemon restart the same save answers that version."""
    with running_daemon(isolated_env) as d, d.client(timeout=60) as c:
        sid = _completed(c)
        assert c.save_skill(sid, "durable-save", idempotency_key="durable")["version"] == 1
    with running_daemon(isolated_env) as d, d.client(timeout=60) as c:
        again = c.save_skill(sid, "durable-save", idempotency_key="durable")
        assert again == {"name": "durable-save", "version": 1, "replayed": True}
        assert c.save_skill(sid, "durable-save")["version"] == 2
