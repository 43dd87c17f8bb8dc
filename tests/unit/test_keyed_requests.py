"""The SDK's keyed requests (``Transport.keyed_request``: starts, skill saves and imports), against a stand-in for
the daemon's replies: a daemon older than skill keys gets the request once without the key instead of a refusal, and
a request whose every attempt timed out says it may still be carried out (review helper-148: the new CLI could not
save a skill on an older daemon; a timed-out save said only "is it running?", and its user saved it twice)."""

from __future__ import annotations

from typing import Any

import pytest

from labd.ipc.errors import LabdError
from labd.ipc.transport import Transport


class _Daemon(Transport):
    """A Transport whose requests are answered by ``answer`` (no socket: ``__init__`` is not run)."""

    def __init__(self, answer: Any) -> None:  # noqa: D107 - no connection on purpose
        self.answer, self.sent = answer, []  # type: ignore[var-annotated]

    def request(self, type_: str, **body: Any) -> Any:
        self.sent.append(dict(body))
        return self.answer(type_, body)


def _old_daemon(type_: str, body: dict[str, Any]) -> dict[str, Any]:
    if "idempotency_key" in body:
        raise LabdError("bad_request", f"{type_} has no field 'idempotency_key' (its fields: session, name): nothing "
                        "was saved", {"field": "idempotency_key"})
    return {"name": body["name"], "version": 1}


def test_a_daemon_older_than_skill_keys_gets_the_save_once_without_a_key() -> None:
    """The SDK's own key refused as an unknown field: the request is sent once more without it (and answered);
    a key the caller chose is never dropped without a word (the refusal is raised)."""
    d = _Daemon(_old_daemon)
    assert d.keyed_request("skill.save", {"session": "s", "name": "n"}, None, 1) == {"name": "n", "version": 1}
    assert ["idempotency_key" in b for b in d.sent] == [True, False]
    d = _Daemon(_old_daemon)
    with pytest.raises(LabdError) as err:
        d.keyed_request("skill.save", {"session": "s", "name": "n"}, "mine", 1)
    assert err.value.code == "bad_request" and len(d.sent) == 1


def test_every_attempt_timed_out_says_it_may_still_be_done() -> None:
    """Each attempt carries the same key; when the last times out, the error says how many were sent and that the
    request may still be carried out, once."""
    def slow(type_: str, body: dict[str, Any]) -> Any:
        raise LabdError("timeout", "no reply from the daemon within 15s (is it running? home /h)")

    d = _Daemon(slow)
    with pytest.raises(LabdError) as err:
        d.keyed_request("skill.save", {"session": "s", "name": "n"}, None, 2)
    assert err.value.code == "timeout" and "sent 3 times with one idempotency key" in err.value.message
    assert "may still be carried out" in err.value.message
    assert len({b["idempotency_key"] for b in d.sent}) == 1 and len(d.sent) == 3
