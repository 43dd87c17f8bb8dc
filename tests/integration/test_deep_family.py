"""``sessions.tree`` of a family deeper than a JSON reply can nest (a chain of branches of branches: two JSON levels
per generation, and JSON readers stop at 255). It used to end the daemon: the reply could not be encoded and the
error left its main loop. Now such a family comes flat (``members``, each naming its parent) and `labd tree` draws
it."""

from __future__ import annotations

import sqlite3

from labd.store.lineage import MAX_TREE_DEPTH
from tests.integration.cli_support import labd

_GENERATIONS = 300


def _chain(db: str, first: str, n: int) -> list[str]:
    """``n`` sessions below ``first``, each the branch of the one before (copies of its row: the store's own shape)."""
    conn = sqlite3.connect(db)
    try:
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("SELECT * FROM sessions WHERE id = ?", (first,)).fetchone())
        ids, parent = [], first
        for i in range(n):
            sid = f"deep{i:08d}"
            row.update(id=sid, name=f"gen {i + 1}", parent_id=parent, origin="branch", created_at=row["created_at"] + 1)
            conn.execute(f"INSERT INTO sessions ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                         tuple(row.values()))
            ids.append(sid)
            parent = sid
        conn.commit()
    finally:
        conn.close()
    return ids


def test_a_family_too_deep_to_nest_comes_flat_and_labd_tree_draws_it(daemon) -> None:
    """A chain of 300 generations: ``sessions.tree`` of its last member answers (the daemon stays up), flat
    (``tree`` null, ``members`` oldest first, ``depth`` 300), and `labd tree` prints one line per member, each
    generation indented one step further, the session asked about marked. A family within the bound still nests."""
    assert _GENERATIONS > MAX_TREE_DEPTH
    with daemon.client() as c:
        root = c.start("demo.count", params={"n": 1, "delay": 0})
        c.wait(root, timeout=60)
    ids = _chain(str(daemon.home / "labd.db"), root, _GENERATIONS)
    with daemon.client() as c:
        r = c.tree(ids[-1])
        assert r["tree"] is None and r["depth"] == _GENERATIONS and r["size"] == _GENERATIONS + 1
        assert [m["id"] for m in r["members"]] == [root, *ids]
        shallow = c.tree(ids[MAX_TREE_DEPTH - 2])  # the same family: its depth is the family's, so it is flat too
        assert shallow["tree"] is None
    out = labd("tree", ids[-1], timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == _GENERATIONS + 1
    assert lines[0].startswith(root) and lines[-1].endswith("<") and ids[-1] in lines[-1]
    assert lines[-1].index(ids[-1]) == 4 * _GENERATIONS  # one level further per generation
    with daemon.client() as c:
        assert c.status()  # the daemon answered, and is still up


def test_a_family_within_the_bound_still_comes_nested(daemon) -> None:
    """A chain of 5 generations comes nested as before (``tree``: each member with its ``children``), no ``members``."""
    with daemon.client() as c:
        root = c.start("demo.count", params={"n": 1, "delay": 0})
        c.wait(root, timeout=60)
    ids = _chain(str(daemon.home / "labd.db"), root, 5)
    with daemon.client() as c:
        r = c.tree(ids[2])
    assert "members" not in r and r["depth"] == 5
    node, chain = r["tree"], []
    while node["children"]:
        chain.append(node["id"])
        [node] = node["children"]
    assert [*chain, node["id"]] == [root, *ids]
