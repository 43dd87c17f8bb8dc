"""Durable steps in process: content-addressed snapshots and their restore, manifest chains, skipping a
completed step's `with` body, positions and divergence (labd.runner.checkpoint, labd.runner.durable)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from labd.runner.checkpoint import MAX_CHAIN, ObjectStore, load_manifest, manifest_object
from labd.runner.durable import Divergence, Durable
from labd.runner.files import FileTracker
from tests.unit.durable_support import durable_ctx as _ctx


def test_an_unchanged_file_is_stored_once_and_restore_makes_the_directory_exactly_the_manifest(tmp_path) -> None:
    """Three checkpoints of a directory where one small file changes each time store the big file once; a
    restore removes what the checkpoint did not have, rewrites what differs and keeps the rest."""
    ctx, events = _ctx(tmp_path)
    big = ctx.workdir / "big.bin"
    big.write_bytes(b"x" * 300_000)
    for i in range(3):
        with ctx.step(f"s{i}") as node:
            (ctx.workdir / "small.txt").write_text(f"v{i}")
            node.result = i
    cps = [p for k, p, _ in events if k == "step.checkpoint"]
    assert [c["new_bytes"] for c in cps] == [300_002, 2, 2]
    objects = tmp_path / "s" / "checkpoints" / "objects"
    stored = [p for p in objects.rglob("*") if p.is_file()]
    sizes = sorted(p.stat().st_size for p in stored)
    # the big file once, three small versions, the first manifest whole (the next two are changes, inline)
    assert len(sizes) == 5 and sizes.count(300_000) == 1 and sum(sizes) < 301_000
    second = _resolve(cps[:2], objects)
    (ctx.workdir / "junk").write_text("junk")
    (ctx.workdir / "small.txt").write_text("changed")
    inode = big.stat().st_ino
    restore_seed = {"mode": "resume", "manifest": cps[1]["manifest"], "files": second, "steps": {}}
    d2 = Durable(lambda *a, **k: 0, tmp_path / "s", ctx.workdir, FileTracker(ctx.workdir, lambda *a, **k: 0),
                 restore_seed)
    d2.restore_workdir()
    assert sorted(p.name for p in ctx.workdir.iterdir()) == ["big.bin", "small.txt"]
    assert (ctx.workdir / "small.txt").read_text() == "v1" and big.stat().st_ino == inode


def _resolve(cps: list[dict[str, Any]], objects: Path) -> dict[str, Any]:
    import orjson

    inline = {c["manifest"]: c["manifest_delta"] for c in cps if c.get("manifest_delta")}
    return load_manifest(lambda h: inline.get(h) or orjson.loads((objects / h[:2] / h).read_bytes()),
                         cps[-1]["manifest"])[0]


def test_manifest_chains_resolve_and_are_cut_every_max_chain(tmp_path) -> None:
    """A manifest stored as changes resolves to the same listing as a whole one; after MAX_CHAIN links the
    next is whole again."""
    store = ObjectStore(tmp_path)
    base = None
    expected: dict[str, list[Any]] = {}
    for i in range(MAX_CHAIN + 2):
        manifest = {**expected, f"f{i}": [hashlib.sha256(str(i).encode()).hexdigest(), 1, 0o644]}
        manifest.pop(f"f{i - 2}", None)
        obj = manifest_object(manifest, base)
        digest = store.put_json(obj)
        assert ("files" in obj) == (i == 0 or i == MAX_CHAIN + 1)
        base = (digest, manifest, (base[2] + 1) if base and "base" in obj else 0)
        expected = manifest
        assert load_manifest(store.get_json, digest)[0] == manifest


def test_a_recorded_step_is_skipped_with_its_result_and_a_renamed_one_diverges(tmp_path) -> None:
    """With a record of two completed steps, re-executing skips both bodies (also a multi-line `with` in a
    coroutine) and restores their results; asking for another name at a recorded position raises Divergence."""
    ran: list[str] = []
    seed = {"mode": "resume", "steps": {"0": {"name": "a", "node": "n1", "result_inline": None},
                                        "1": {"name": "b", "node": "n2"}}}
    ctx, events = _ctx(tmp_path, seed)
    import base64
    import pickle

    seed["steps"]["0"]["result_inline"] = base64.b64encode(pickle.dumps({"x": 1})).decode()
    ctx.durable.record = seed["steps"]

    async def flow() -> Any:
        with ctx.step(
            "a",
        ) as one:
            ran.append("a")
            one.result = "new"
        with ctx.step("b") as two:
            ran.append("b")
        with ctx.step("c") as three:
            ran.append("c")
            three.result = (one.result, two.result, two.reused)
        return three.result

    assert asyncio.run(flow()) == ({"x": 1}, None, True)
    assert ran == ["c"]
    assert [p["name"] for k, p, _ in events if k == "step.started"] == ["c"]  # a resume shows no new nodes for a, b
    ctx2, events2 = _ctx(tmp_path / "other", {"mode": "resume", "steps": {"0": {"name": "a", "node": "n1"}}})
    with pytest.raises(Divergence), ctx2.step("not a"):
        pass
    assert [p for k, p, _ in events2 if k == "step.diverged"][0]["expected"] == "a"
