"""approvals.list across sessions is fair and bounded: one session flooding approvals (many, with big prompts)
neither pushes another session's approval out of the list nor makes the reply too large; each session's rest
is counted (`omitted`), reachable page by page (`after`), and each approval whole with `full`."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import wait_until
from tests.integration.cli_support import labd

N, SIZE = 600, 40_000  # 600 approvals of 40 KB prompts: 24 MB, over the 16 MiB reply limit as a whole

FLOWS = textwrap.dedent('''
    import threading

    def flood(ctx, n, size):
        """n approvals at once, each with a prompt of `size` characters."""
        def ask(i):
            try:
                ctx.approval("flood", f"#{i:04d} " + "x" * size, options=["ok"])
            except BaseException:
                pass
        threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def one(ctx):
        return ctx.approval("single", "the other session's question", options=["approve", "reject"]).decision
''')


def _asked(c: Any, sid: str) -> int:
    """How many approvals the session has asked for (from its events: independent of approvals.list)."""
    n, since = 0, 0
    while True:
        page = c.events(sid, since=since, kinds=["approval.requested"])
        n += len(page["events"])
        if not page["more"] or not page["events"]:
            return n
        since = page["events"][-1]["seq"]


def test_a_flooding_session_neither_hides_another_sessions_approval_nor_overflows_the_list(daemon,
                                                                                           tmp_path: Path) -> None:
    """Session A asks 600 approvals with 40 KB prompts, then session B asks one. The cross-session pending list
    holds B's approval and A's oldest 20 (prompts cut to 2,000 characters, `truncated`, `prompt_length`),
    says A has 580 more (`omitted`, `omitted_total`), and is far under the reply limit. `labd approvals` says
    so too; A's approvals page by page (`after`) are all 600, and `full` gives a prompt whole."""
    (tmp_path / "flows.py").write_text(FLOWS)
    with daemon.client(timeout=60) as c:
        flood = c.start(f"{tmp_path / 'flows.py'}:flood", params={"n": N, "size": SIZE})
        wait_until(lambda: _asked(c, flood) == N, timeout=180, interval=1.0, what=f"{N} approvals asked for")
        other = c.start(f"{tmp_path / 'flows.py'}:one", params={})
        wanted = wait_until(lambda: c.approvals(other), timeout=60, what="the other session's approval")[0]

        reply = c.request("approvals.list")
        size = len(orjson.dumps(reply))
        assert size < 256 * 1024, size  # 20 cut prompts and one short one, not 24 MB
        ids = [a["id"] for a in reply["approvals"]]
        assert wanted["id"] in ids
        mine = [a for a in reply["approvals"] if a["session_id"] == flood]
        assert len(mine) == 20 and reply["omitted"] == {flood: N - 20} and reply["omitted_total"] == N - 20
        assert all(a["truncated"] and len(a["prompt"]) == 2000 and a["prompt_length"] == SIZE + 6 for a in mine)
        (theirs,) = [a for a in reply["approvals"] if a["session_id"] == other]
        assert theirs["prompt"] == "the other session's question" and theirs["truncated"] is False
        # the client's list is the same list (compatible: a list of approvals, oldest first)
        assert [a["id"] for a in c.approvals()] == ids

        # one session's: every approval, page by page
        seen: list[str] = []
        while True:
            page = c.request("approvals.list", session=flood, **({"after": seen[-1]} if seen else {}))
            seen += [a["id"] for a in page["approvals"]]
            if not page["omitted_total"]:
                break
            assert page["omitted"] == {flood: N - len(seen)}
        assert len(seen) == len(set(seen)) == N
        assert [a["id"] for a in mine] == seen[:20]  # the cross-session list had A's oldest, oldest first
        (whole,) = c.approvals(flood, full=True, limit=1)
        assert whole["id"] == seen[0] and whole["prompt"] == mine[0]["prompt"][:6] + "x" * SIZE

        out = labd("approvals")
        assert out.returncode == 0, out.stderr
        assert other in out.stdout and f"{flood}: {N - 20} more pending not shown" in out.stderr
        c.stop(flood, grace=1)
        c.resolve(other, "approve")
