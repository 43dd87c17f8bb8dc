"""The SDK's and ``labd ps``'s paging over ``session.list``, against a daemon that pages and one older than paging
(no ``more``/``next``; ``before`` unknown): a list is never cut short without saying so."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from labd.frontends.cli import listing
from labd.ipc.client import Client
from labd.ipc.errors import LabdError


class FakeDaemon(Client):
    """A Client whose ``session.list`` answers from ``total`` sessions (newest first), as a daemon that pages
    (``paging``) or as one older than paging (no ``more``/``next``, ``before`` refused as an unknown field)."""

    def __init__(self, total: int, paging: bool) -> None:  # no connection: requests are answered here
        self.rows = [{"id": f"{n:032x}", "created_at": float(n), "name": f"s{n}", "workflow": "w",
                      "status": "completed"} for n in range(total, 0, -1)]
        self.paging = paging
        self.asked: list[dict[str, Any]] = []

    def request(self, type_: str, **body: Any) -> Any:  # type: ignore[override]
        assert type_ == "session.list"
        self.asked.append(body)
        limit = body["limit"]
        if not self.paging:
            if "before" in body:
                raise LabdError("bad_request", "session.list has no filter before")
            return {"sessions": self.rows[:limit]}
        start = 0
        if "before" in body:
            at, sid = body["before"].split("/")
            start = next(i for i, r in enumerate(self.rows) if r["id"] == sid) + 1
        page = self.rows[start:start + limit]
        more = start + limit < len(self.rows)
        last = page[-1] if page else {}
        return {"sessions": page, "more": more, "next": f"{last['created_at']!r}/{last['id']}" if more else None}


@pytest.mark.parametrize("paging", [True, False])
def test_iter_sessions_lists_every_session_once_or_says_it_cannot(paging: bool) -> None:
    """A paging daemon: every one of 12,345 sessions once, newest first. An older daemon: its newest 10,000 (asked
    for at once after a first page says there are more), then ``list_incomplete``, never a silent cut."""
    fake = FakeDaemon(12_345, paging)
    got: list[str] = []
    if paging:
        got = [r["id"] for r in fake.iter_sessions(page=1000)]
        assert got == [r["id"] for r in fake.rows]
        return
    with pytest.raises(LabdError) as err:
        for r in fake.iter_sessions(page=1000):
            got.append(r["id"])
    assert err.value.code == "list_incomplete"
    assert got == [r["id"] for r in fake.rows[:10_000]]  # each once
    small = FakeDaemon(1_500, paging=False)
    assert [r["id"] for r in small.iter_sessions(page=1000)] == [r["id"] for r in small.rows]


def _ps(fake: FakeDaemon, limit: int, name: str | None = None) -> tuple[list[dict[str, Any]], bool]:
    args = argparse.Namespace(status=None, all=True, tag=[], since=None, workflow=None, name=name, limit=limit,
                              sort=None)
    ctx = argparse.Namespace(client=lambda: fake)
    return listing._ps_rows(args, ctx)  # type: ignore[arg-type]


@pytest.mark.parametrize("paging", [True, False])
def test_ps_says_a_list_is_cut_exactly_when_it_is(paging: bool) -> None:
    """`labd ps --limit N` lists the newest N and says "more" only when more match (a list of exactly N is whole);
    `--limit all` (0) lists all a paging daemon has, and from an older daemon its newest 10,000, saying more match."""
    fake = FakeDaemon(250, paging)
    rows, more = _ps(fake, 250)
    assert len(rows) == 250 and more is False
    rows, more = _ps(fake, 249)
    assert len(rows) == 249 and more is True
    big = FakeDaemon(12_000, paging)
    rows, more = _ps(big, 0)
    assert (len(rows), more) == ((12_000, False) if paging else (10_000, True))
    rows, more = _ps(big, 5, name="s11")  # matched here: the newest five names containing "s11"
    assert [r["name"] for r in rows] == ["s11999", "s11998", "s11997", "s11996", "s11995"] and more is True


def test_the_note_of_a_cut_all_says_the_daemon_is_older() -> None:
    """A cut `--limit all` (only an older daemon cuts it) says why and what to do, not "--limit all shows them"."""
    all_args = argparse.Namespace(limit=0, quiet=False, json=False)
    assert "older than paging" in listing._more_hint(all_args)
    assert "--limit N" in listing._more_hint(argparse.Namespace(limit=5, quiet=True, json=False))


def test_a_name_filter_with_brackets_is_taken_literally_unless_it_is_a_glob() -> None:
    """`ps --name 'lr[0.1]'` finds the names holding that text (as a glob it matched lr0, lr1 and lr. instead);
    with a * or ? it is a glob, character classes included."""
    fake = FakeDaemon(0, paging=True)
    fake.rows = [{"id": f"{n:032x}", "created_at": float(n), "name": name, "workflow": "w", "status": "completed"}
                 for n, name in enumerate(["sweep-lr[0.1]", "sweep-lr0", "sweep-lr1", "other"], 1)][::-1]
    assert [r["name"] for r in _ps(fake, 10, name="lr[0.1]")[0]] == ["sweep-lr[0.1]"]
    assert sorted(r["name"] for r in _ps(fake, 10, name="*lr[01]")[0]) == ["sweep-lr0", "sweep-lr1"]
