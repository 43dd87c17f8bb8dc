"""Receiving shipped files and checkpoint objects (daemon/shipped.py, what ingest does with a remote runner's
``file.shipped`` and ``checkpoint.object`` events; runner/carry.py, what a resume takes to its node),
on a real directory without Ray: chunks assemble into the file only when the last one matches the sha256; a path
that would leave the session's work directory, or go through a symlink out of it, is refused."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import orjson

from labd.daemon.shipped import receive


def _chunks(rel: str, data: bytes, size: int) -> list[dict[str, object]]:
    digest = hashlib.sha256(data).hexdigest()
    out = []
    for off in range(0, max(len(data), 1), size):
        part = data[off:off + size]
        out.append({"path": rel, "size": len(data), "sha256": digest, "offset": off,
                    "data": base64.b64encode(part).decode(), "last": off + size >= len(data)})
    return out


def test_chunks_assemble_atomically_and_bytes_are_not_stored(tmp_path: Path) -> None:
    """Three chunks become the file (byte for byte) only when the last arrives; before that nothing is at the
    path; the payloads returned for storage carry no ``data``. A wrong sha256 leaves no file and says so."""
    data = os.urandom(2500)
    work = tmp_path / "s1" / "work"
    stored = []
    for i, ev in enumerate(_chunks("deep/dir/f.bin", data, 1000)):
        stored.append(receive(tmp_path, "s1", ev))
        if i < 2:
            assert not (work / "deep" / "dir" / "f.bin").exists()
    assert (work / "deep" / "dir" / "f.bin").read_bytes() == data
    assert all("data" not in p and "error" not in p for p in stored) and sum(p["bytes"] for p in stored) == 2500
    bad = _chunks("g.bin", b"abc", 10)[0] | {"sha256": "0" * 64}
    assert "sha256 mismatch" in receive(tmp_path, "s1", bad)["error"]
    assert not (work / "g.bin").exists()


def test_paths_out_of_the_work_directory_are_refused(tmp_path: Path) -> None:
    """``..``, absolute paths and a symlinked directory leading out of the work directory are refused; nothing is
    written outside it."""
    work = tmp_path / "s2" / "work"
    work.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (work / "link").symlink_to(outside)
    for rel in ("../escape.txt", "/tmp/abs.txt", "a/../../escape.txt", "link/x.txt"):
        got = receive(tmp_path, "s2", _chunks(rel, b"x", 10)[0])
        assert got.get("error", "").startswith("refused"), (rel, got)
    assert not list(outside.iterdir()) and not (tmp_path / "s2" / "escape.txt").exists()


def test_ship_then_receive_round_trip_within_small_max_message(tmp_path: Path) -> None:
    """What a remote runner ships (runner/ship.py: a checkpoint's snapshot, chunked for a 64 KiB ``max_message``)
    is received as the same tree of files; every event fits the message limit; symlinks are not shipped."""
    import orjson

    from labd.runner.durable import Durable
    from labd.runner.files import FileTracker
    from labd.runner.ship import Shipper, chunk_for

    src = tmp_path / "node" / "work"
    (src / "a" / "b").mkdir(parents=True)
    files = {"top.txt": b"hello\n", "a/b/big.bin": os.urandom(300_000), "a/empty": b""}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    (src / "a" / "ln").symlink_to("/etc/passwd")
    tracker = FileTracker(src, lambda *a, **k: 0)
    tracker.scan(None)
    snapshot = Durable(lambda *a, **k: 0, src.parent, src, tracker).snapshot()
    events: list[dict[str, object]] = []
    shipper = Shipper(src, lambda kind, payload: events.append(payload) or 0, 1 << 30, chunk_for(64 * 1024))
    n, total = shipper.ship(snapshot)
    assert (n, total) == (3, sum(len(d) for d in files.values()))
    assert all(len(orjson.dumps(e)) < 64 * 1024 for e in events)
    for e in events:
        assert "error" not in receive(tmp_path, "s3", e)
    work = tmp_path / "s3" / "work"
    assert {p.relative_to(work).as_posix(): p.read_bytes() for p in work.rglob("*") if p.is_file()} == files


def test_incremental_shipping_sends_only_changes_and_deletions(tmp_path: Path) -> None:
    """After each checkpoint a remote runner ships only what changed since its last shipment (an untouched
    file is not sent again), and a file deleted on the node is deleted from the daemon's copy too."""
    from labd.runner.durable import Durable
    from labd.runner.files import FileTracker
    from labd.runner.ship import Shipper

    src = tmp_path / "node" / "work"
    src.mkdir(parents=True)
    (src / "keep.txt").write_text("same")
    (src / "gone.txt").write_text("soon deleted")
    tracker = FileTracker(src, lambda *a, **k: 0)
    durable = Durable(lambda *a, **k: 0, src.parent, src, tracker)
    sent: list[dict[str, object]] = []
    shipper = Shipper(src, lambda kind, payload: sent.append(payload) or 0, 1 << 30)

    def ship() -> tuple[int, int]:
        tracker.scan(None)
        return shipper.ship(durable.snapshot())

    def deliver() -> list[str]:
        batch, sent[:] = list(sent), []
        for e in batch:
            assert "error" not in receive(tmp_path, "s4", e)
        return sorted(str(e["path"]) + (" (deleted)" if e.get("deleted") else "") for e in batch)

    assert ship() == (2, len("same") + len("soon deleted"))
    assert deliver() == ["gone.txt", "keep.txt"]
    (src / "gone.txt").unlink()
    (src / "new.txt").write_text("step two")
    os.utime(src / "keep.txt")  # touched, same bytes: not sent again
    assert ship() == (1, len("step two"))
    assert deliver() == ["gone.txt (deleted)", "new.txt"]
    work = tmp_path / "s4" / "work"
    assert sorted(p.name for p in work.iterdir()) == ["keep.txt", "new.txt"]
    assert ship() == (0, 0) and deliver() == []


def _node_durable(tmp: Path) -> tuple[Any, Any, list[tuple[str, dict[str, Any]]], Path]:
    """A remote runner's durable steps on ``tmp/node``: objects listed and shipped before each checkpoint (as
    runner/session.py wires them), its events in one list, in order."""
    from labd.runner.durable import Durable
    from labd.runner.files import FileTracker
    from labd.runner.ship import Shipper

    events: list[tuple[str, dict[str, Any]]] = []

    def emit(kind: str, payload: dict[str, Any], node: Any = None, parent: Any = None) -> int:
        events.append((kind, payload))
        return len(events)

    work = tmp / "node" / "work"
    work.mkdir(parents=True, exist_ok=True)  # a resumed one's holds what its restore left
    tracker = FileTracker(work, emit)
    durable = Durable(emit, work.parent, work, tracker, list_objects=True)
    shipper = Shipper(work, emit, 1 << 30, 64 * 1024)
    durable.before_checkpoint = lambda: shipper.ship_objects(durable.objects)
    return durable, tracker, events, work


def _objects(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.glob("*/*") if p.is_file()}


def test_checkpoint_objects_go_home_before_their_checkpoint(tmp_path: Path) -> None:
    """A remote runner ships every object a checkpoint wrote (its manifest, its result, each file's content, a large
    file's chunks and their index) as ``checkpoint.object`` events *before* the ``step.checkpoint`` that names them,
    so a daemon holding the checkpoint holds what a resume or branch from it needs: received, the session's object
    store at home is the node's, byte for byte. The next checkpoint ships only what it added."""
    from labd.daemon.shipped import receive_object
    from labd.runner.checkpoint import OBJECTS_DIR

    durable, tracker, events, work = _node_durable(tmp_path)
    (work / "small.txt").write_text("one")
    (work / "big.bin").write_bytes(b"".join(bytes([i]) * (1 << 20) for i in range(1, 6)))
    tracker.scan("n1")
    durable.checkpoint("n1", "0", "first", {"answer": "x" * 5000})
    kinds = [k for k, _ in events]
    assert kinds[-1] == "step.checkpoint" and "checkpoint.object" in kinds
    assert all(k == "checkpoint.object" for k in kinds[:-1] if k != "file.changed" and k != "file.created")
    (tmp_path / "home").mkdir()  # the daemon's directory of sessions
    for kind, payload in events:
        if kind == "checkpoint.object":
            got = receive_object(tmp_path / "home", "s1", payload)
            assert "data" not in got and "error" not in got, got
    node, home = work.parent / OBJECTS_DIR, tmp_path / "home" / "s1" / OBJECTS_DIR
    assert _objects(home) == _objects(node) and len(_objects(node)) >= 8  # 5 chunks, their index, a file, manifest
    assert any(name.endswith(".chunks") for name in _objects(home))
    assert all(p.stat().st_mode & 0o222 == 0 for p in home.glob("*/*"))  # read-only, as the node's store has them
    events.clear()
    (work / "small.txt").write_text("two")
    tracker.scan("n2")
    durable.checkpoint("n2", "1", "second", None)
    names = [p["name"] for k, p in events if k == "checkpoint.object"]
    assert 1 <= len(names) <= 2 and events[-1][0] == "step.checkpoint"  # the changed file, its manifest


def test_a_checkpoint_object_that_is_not_one_is_refused(tmp_path: Path) -> None:
    """``checkpoint.object`` names are object names only (``ab/<sha256>``, ``ab/<sha256>.chunks``, ``ab`` its first
    two digits): anything else is refused and nothing written; an object whose bytes do not hold its digest, or an
    index that is not JSON, is not kept; an object already there is kept as it is (objects never change)."""
    import hashlib

    from labd.daemon.shipped import receive_object

    def ev(name: str, data: bytes) -> dict[str, object]:
        return {"name": name, "size": len(data), "offset": 0, "data": base64.b64encode(data).decode(), "last": True}

    good = hashlib.sha256(b"abc").hexdigest()
    for name in ("../x", f"zz/{good}", f"{good[:2]}/{good}/x", f"/{good[:2]}/{good}", f"{good[:2]}/{good}.txt",
                 f"{good[:2]}/../{good}"):
        assert receive_object(tmp_path, "s", ev(name, b"abc"))["error"].startswith("refused"), name
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").rglob("*.*"))
    assert "damaged" in receive_object(tmp_path, "s", ev(f"{good[:2]}/{good}", b"abd"))["error"]
    assert "damaged" in receive_object(tmp_path, "s", ev(f"{good[:2]}/{good}.chunks", b"not json"))["error"]
    root = tmp_path / "s" / "checkpoints" / "objects" / good[:2]
    assert sorted(p.name for p in root.iterdir()) == []
    assert "error" not in receive_object(tmp_path, "s", ev(f"{good[:2]}/{good}", b"abc"))
    assert "error" not in receive_object(tmp_path, "s", ev(f"{good[:2]}/{good}", b"other bytes"))  # kept as it was
    assert (root / good).read_bytes() == b"abc"
    # an object store a runner made a symlink (a local runner can, in its own session directory): not followed, it
    # is replaced by a real directory, and nothing is made beyond it (review helper-149: a directory was made there)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "t" / "checkpoints").mkdir(parents=True)
    (tmp_path / "t" / "checkpoints" / "objects").symlink_to(outside)
    assert "error" not in receive_object(tmp_path, "t", ev(f"{good[:2]}/{good}", b"abc"))
    assert not list(outside.iterdir()) and not (tmp_path / "t" / "checkpoints" / "objects").is_symlink()
    assert (tmp_path / "t" / "checkpoints" / "objects" / good[:2] / good).read_bytes() == b"abc"


def test_what_a_resume_carries_to_its_node_is_written_there_whole(tmp_path: Path) -> None:
    """The Ray driver reads a resumed session's seeds (a replay's too) and the objects its seed needs from the home
    (``carried``) and the actor writes them on the node (``unpack``): the same files, objects read-only; a path that
    leaves the session directory is refused. Only what the seed names travels: the restored work directory's files (a
    chunked one as its index and chunks), the kept steps' results, the manifest chain; an older version of a file,
    partial and temporary files, a symlink planted among the objects and an object that no longer holds its digest
    stay at home. The seed carried says what the home's objects hold: the node's cap on the session's objects counts
    from it (review helper-155: it counted only what was carried)."""
    import pytest

    from labd.runner.carry import carried, unpack
    from labd.runner.checkpoint import OBJECTS_DIR, ObjectStore

    home = tmp_path / "home" / "s"
    store = ObjectStore(home / OBJECTS_DIR)
    small = store.put_bytes(b"object")
    result = store.put_bytes(b'{"answer": 42}')
    old = store.put_bytes(b"an older version of the file")
    (tmp_path / "big").write_bytes(os.urandom(5 << 20))
    big, _ = store.put_file(tmp_path / "big", hashlib.sha256((tmp_path / "big").read_bytes()).hexdigest())
    tampered = store.put_bytes(b"original")
    tampered_path = home / OBJECTS_DIR / tampered[:2] / tampered
    tampered_path.chmod(0o600)
    tampered_path.write_bytes(b"replaced")  # no longer its digest: left home, the node's restore says it is damaged
    files = {"a.txt": [small, 6, 0o644], "big.bin": [big, 5 << 20, 0o644], "c.txt": [tampered, 8, 0o644]}
    chain = store.put_json({"files": files})
    seed = {"steps": {"0": {"name": "one", "node": "n1", "result": result}}, "manifest": chain, "files": files,
            "chain": [chain]}
    (home / "durable.seed.json").write_bytes(orjson.dumps(seed))
    (home / "replay.json").write_text('{"responses": []}')
    objects = home / OBJECTS_DIR
    (objects / "ab").mkdir(exist_ok=True)
    (objects / "ab" / ("ab" + "1" * 62 + ".labd-part")).write_bytes(b"half")
    (objects / "ab" / ".tmp-1").write_bytes(b"tmp")
    secret = tmp_path / "secret"
    secret.write_bytes(b"not the session's")
    planted = hashlib.sha256(b"planted").hexdigest()
    (objects / planted[:2]).mkdir(exist_ok=True)
    (objects / planted[:2] / planted).symlink_to(secret)
    spec = carried({"session_id": "s", "carry_from": str(home), "durable": True})
    chunks = store.chunks(big)
    assert chunks is not None and len(chunks) == 5
    want = {"durable.seed.json", "replay.json", *(f"{OBJECTS_DIR}/{p.as_posix()}" for d in (small, result, chain, big)
                                                  for p in store.parts(d))}
    assert "carry_from" not in spec and set(spec["carry"]) == want, set(spec["carry"]) ^ want
    assert not any(old in rel or tampered in rel for rel in spec["carry"])
    # the node's store holds only what was carried; the session's cap on its objects counts from the home's whole
    from labd.runner.checkpoint_store import SessionBudget, total_size

    carried_seed = orjson.loads(spec["carry"]["durable.seed.json"])
    assert carried_seed["objects_bytes"] == total_size(objects) > 5 << 20
    assert {k: v for k, v in carried_seed.items() if k != "objects_bytes"} == seed
    node = tmp_path / "node" / "s"
    assert unpack(node, spec["carry"]) == len(want)
    assert (node / "durable.seed.json").read_bytes() == spec["carry"]["durable.seed.json"]
    assert (node / "replay.json").read_text() == '{"responses": []}'
    assert ObjectStore(node / OBJECTS_DIR).get_verified(big) == (tmp_path / "big").read_bytes()
    assert (node / OBJECTS_DIR / small[:2] / small).stat().st_mode & 0o222 == 0  # read-only
    assert SessionBudget(node / OBJECTS_DIR, floor=carried_seed["objects_bytes"]).used == total_size(objects)
    assert unpack(node, spec["carry"]) == 2  # the seeds again; the objects are there already
    # the seed naming the planted symlink's digest: the link is not followed
    (home / "durable.seed.json").write_bytes(orjson.dumps({**seed, "files": {"x": [planted, 17, 0o644]}}))
    assert not any(planted in rel for rel in carried({"carry_from": str(home)})["carry"])
    for bad in ("../escape", "/abs", "a/../../x", ""):
        with pytest.raises(ValueError):
            unpack(node, {bad: b"x"})
    assert not (tmp_path / "node" / "escape").exists()


def _write_seed(session: Path, events: list[tuple[str, dict[str, Any]]]) -> None:
    """The seed the daemon writes before a resume (``build_seed``, from the session's ``step.checkpoint`` events as
    the store returns them)."""
    from labd.daemon.api.seed import build_seed, write_seed
    from labd.runner.checkpoint import OBJECTS_DIR

    cps = [{"node_id": f"n{i}", **p} for i, (kind, p) in enumerate(events) if kind == "step.checkpoint"]
    write_seed(session, build_seed(cps, session / OBJECTS_DIR, mode="resume"))


def test_a_resumed_remote_runner_ships_only_what_differs_from_the_homes_copy(tmp_path: Path) -> None:
    """A resumed remote runner starts from the home's copy of its work directory (the seed's ``shipped``, from the
    session's ``file.shipped`` events): a restored file the home has is not shipped again, and a file the restore
    removed on the node is deleted at home (review helper-149: the home kept it, and a 5 MiB restored file was
    shipped again)."""
    import hashlib

    from labd.runner.durable import Durable
    from labd.runner.files import FileTracker
    from labd.runner.ship import Shipper

    work = tmp_path / "node" / "work"
    work.mkdir(parents=True)
    (work / "keep.txt").write_text("kept")
    sent: list[dict[str, object]] = []
    tracker = FileTracker(work, lambda *a, **k: 0)
    durable = Durable(lambda *a, **k: 0, work.parent, work, tracker)
    shipper = Shipper(work, lambda kind, payload: sent.append(payload) or 0, 1 << 30)
    shipper.assume_shipped({"keep.txt": hashlib.sha256(b"kept").hexdigest(),
                            "junk.txt": hashlib.sha256(b"junk").hexdigest()})
    tracker.scan(None)
    assert shipper.ship(durable.snapshot()) == (0, 0)
    assert [(p["path"], p.get("deleted")) for p in sent] == [("junk.txt", True)]



def test_past_ship_max_bytes_no_more_objects_are_shipped_and_the_session_says_so(tmp_path: Path) -> None:
    """Objects over ``[launcher] ship_max_bytes`` stop the shipping of objects for good (a checkpoint missing one is
    unusable, and stray chunks of a file only took the files' budget: review helper-149), said once in a ``log``
    event naming the setting; later checkpoints ship none."""
    from labd.runner.ship import Shipper

    durable, tracker, events, work = _node_durable(tmp_path)
    shipper = Shipper(work, lambda kind, payload: events.append((kind, payload)) or 0, 3 << 20, 64 * 1024)
    durable.before_checkpoint = lambda: shipper.ship_objects(durable.objects)
    (work / "big.bin").write_bytes(b"".join(bytes([i]) * (1 << 20) for i in range(1, 6)))
    tracker.scan("n1")
    durable.checkpoint("n1", "0", "first", None)
    shipped = {p["name"] for k, p in events if k == "checkpoint.object"}
    warnings = [p["event"] for k, p in events if k == "log" and "ship_max_bytes" in str(p.get("event"))]
    assert 1 <= len(shipped) <= 3 and len(warnings) == 1, (shipped, warnings)
    events.clear()
    (work / "small.txt").write_text("later")
    tracker.scan("n2")
    durable.checkpoint("n2", "1", "second", None)
    assert not [p for k, p in events if k == "checkpoint.object"] and events[-1][0] == "step.checkpoint"
    assert not [p for k, p in events if k == "log"]  # said once


def _node_shipping(tmp: Path, max_bytes: int = 1 << 30) -> tuple[Any, Any, list[tuple[str, dict[str, Any]]], Path]:
    """:func:`_node_durable` with its files shipped after each checkpoint too, as runner/session.py wires a remote
    runner (objects before the checkpoint, files after it)."""
    from labd.runner.ship import Shipper

    durable, tracker, events, work = _node_durable(tmp)
    shipper = Shipper(work, lambda kind, payload: events.append((kind, payload)) or 0, max_bytes, 64 * 1024,
                      ranges=True)
    durable.before_checkpoint = lambda: shipper.ship_objects(durable.objects)
    durable.after_checkpoint = shipper.ship
    return durable, shipper, events, work


def _deliver(home: Path, events: list[tuple[str, dict[str, Any]]]) -> int:
    """Ingest's part, in the events' order: objects into the home's object store, files into its work copy. Returns
    the bytes that travelled (decoded ``data`` of both kinds); every event must be taken without an error."""
    from labd.daemon.shipped import receive_object

    wire = 0
    for kind, payload in events:
        if kind in ("checkpoint.object", "file.shipped"):
            wire += len(base64.b64decode(str(payload.get("data") or "")))
            got = (receive_object if kind == "checkpoint.object" else receive)(home, "s1", payload)
            assert "data" not in got and "error" not in got, got
    return wire


def _tree_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_files_bytes_travel_once_its_objects_are_home(tmp_path: Path) -> None:
    """A remote runner's changed files go as ``file.shipped`` events *without* their bytes once the objects they are
    made of went home (``from_object``: the daemon copies them from the session's object store): a step's bytes on
    the wire are its objects' only, and the home's copy of the work directory is the node's, byte for byte (a small
    file, an empty one, a 5 MiB one stored in chunks). A chunked file that grows by 100 bytes costs its next step
    about its new chunk, not its 5 MiB again; the final ship (no checkpoint) ships its objects first as well."""
    durable, shipper, events, work = _node_shipping(tmp_path)
    (work / "small.txt").write_text("one")
    (work / "empty.txt").write_bytes(b"")
    big = b"".join(bytes([i]) * (1 << 20) for i in range(1, 6))
    (work / "big.bin").write_bytes(big)
    durable.files.scan("n1")
    durable.checkpoint("n1", "0", "first", None)
    files = [p for k, p in events if k == "file.shipped"]
    assert sorted(p["path"] for p in files if p["last"]) == ["big.bin", "empty.txt", "small.txt"]
    assert all(p.get("from_object") and "data" not in p for p in files), files
    assert [p["length"] for p in files if p["path"] == "big.bin"] == [4 << 20, 1 << 20]
    home = tmp_path / "home"
    home.mkdir()
    objects = sum(int(p["size"]) for k, p in events if k == "checkpoint.object" and p["last"])
    assert _deliver(home, events) == objects < len(big) + 64 * 1024  # before: the objects, and the files again
    assert _tree_of(home / "s1" / "work") == _tree_of(work)
    events.clear()
    with open(work / "big.bin", "ab") as f:
        f.write(b"x" * 100)
    durable.files.scan("n2")
    durable.checkpoint("n2", "1", "second", None)
    assert _deliver(home, events) < (1 << 20) + 64 * 1024  # its new last chunk, the index, the manifest
    assert _tree_of(home / "s1" / "work") == _tree_of(work)
    events.clear()
    (work / "late.txt").write_text("after the last step")
    durable.files.scan(None)
    assert shipper.ship(durable.snapshot()) == (1, len("after the last step"))
    shipping = [k for k, _ in events if k in ("checkpoint.object", "file.shipped")]
    assert shipping[-1] == "file.shipped" and set(shipping[:-1]) == {"checkpoint.object"}, shipping
    assert "data" not in events[-1][1]
    _deliver(home, events)
    assert (home / "s1" / "work" / "late.txt").read_text() == "after the last step"


def test_a_file_whose_objects_are_not_known_home_carries_its_bytes(tmp_path: Path) -> None:
    """A file made of an object this runner did not ship (one already on the node: a resume's carry, or a former
    runner's on the same node that may never have gone home) is shipped with its bytes, as before: the home's copy
    gets it even though the home's object store lacks the object."""
    from labd.runner.checkpoint import OBJECTS_DIR
    from labd.runner.objects import ObjectStore

    stale = ObjectStore(tmp_path / "node" / OBJECTS_DIR).put_bytes(b"left by an earlier runner")
    durable, _shipper, events, work = _node_shipping(tmp_path)
    (work / "same.txt").write_bytes(b"left by an earlier runner")
    durable.files.scan("n1")
    durable.checkpoint("n1", "0", "first", None)
    (shipped,) = [p for k, p in events if k == "file.shipped"]
    assert shipped["sha256"] == stale and "from_object" not in shipped and shipped["data"]
    assert stale not in {p["name"].split("/")[-1] for k, p in events if k == "checkpoint.object"}
    home = tmp_path / "home"
    home.mkdir()
    _deliver(home, events)
    assert (home / "s1" / "work" / "same.txt").read_bytes() == b"left by an earlier runner"


def test_a_from_object_chunk_the_home_cannot_serve_is_refused(tmp_path: Path) -> None:
    """A ``from_object`` chunk names a range of an object the daemon must have: an object not at home, a range longer
    than ``MAX_RANGE`` or past the object's end, a name that is not a digest, or a damaged chunk index is an
    ``error`` on the stored event (never an exception into ingest), and no file appears."""
    from labd.daemon.object_ranges import MAX_RANGE
    from labd.daemon.shipped import receive_object
    from labd.runner.checkpoint import OBJECTS_DIR

    data = b"content at home"
    digest = hashlib.sha256(data).hexdigest()

    def chunk(**over: object) -> dict[str, object]:
        return {"path": "f.txt", "size": len(data), "sha256": digest, "offset": 0, "length": len(data), "last": True,
                "from_object": True, **over}

    assert "not in the session's object store at home" in receive(tmp_path, "s1", chunk())["error"]
    obj = {"name": f"{digest[:2]}/{digest}", "size": len(data), "offset": 0,
           "data": base64.b64encode(data).decode(), "last": True}
    assert "error" not in receive_object(tmp_path, "s1", obj)
    for bad in (chunk(length=MAX_RANGE + 1), chunk(length=len(data) + 1), chunk(offset=-1),
                chunk(sha256="../../daemon.key"), chunk(length=-1)):
        assert "error" in receive(tmp_path, "s1", bad), bad
    assert not (tmp_path / "s1" / "work" / "f.txt").exists()
    # a chunk index that is not the form runner/objects.py writes (1 MiB chunks, one digest a MiB): refused when it
    # is shipped; and one put in place by the session's runner (a local one can write its object store) is refused
    # when a range is read through it
    fake = hashlib.sha256(b"index").hexdigest()
    for index in (b'{"size": 3, "chunk": 0, "chunks": []}', b'{"size": 3, "chunks": 7}', b'{"size": 3}',
                  b'{"size": 3, "chunk": 1, "chunks": ["%s"]}' % digest.encode(),  # 1-byte chunks: an open a byte
                  b'{"size": 3, "chunk": 1048576, "chunks": ["../../x"]}', b'[1, 2]',
                  b'{"size": 3, "chunk": 1048576, "chunks": ["%s"]}' % digest.encode()):  # spaced: not at its offsets
        name = f"{fake[:2]}/{fake}.chunks"
        planted = tmp_path / "s1" / OBJECTS_DIR / fake[:2] / f"{fake}.chunks"
        planted.unlink(missing_ok=True)
        got = receive_object(tmp_path, "s1", {**obj, "name": name, "size": len(index),
                                               "data": base64.b64encode(index).decode()})
        assert "damaged" in got["error"], (index, got)
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.write_bytes(index)
        got = receive(tmp_path, "s1", chunk(sha256=fake, length=3, size=3))
        assert "error" in got and not (tmp_path / "s1" / "work" / "f.txt").exists(), got
    # a good index, then a range of the same object claiming another size (its entries are not where that puts them)
    planted.unlink()
    planted.write_bytes(b'{"size":3,"chunk":1048576,"chunks":["%s"]}' % digest.encode())  # as the runner writes
    assert "sha256 mismatch" in receive(tmp_path, "s1", chunk(sha256=fake, length=3, size=3))["error"]
    got = receive(tmp_path, "s1", chunk(sha256=fake, size=5 << 20, offset=4 << 20, length=1))
    assert "damaged or not of a" in got["error"], got
    planted.unlink()  # the same form with an entry that is no digest (a local runner rewrote it in its own store)
    planted.write_bytes(b'{"size":3,"chunk":1048576,"chunks":["%s"]}' % (b"../" + digest.encode()[3:]))
    assert "damaged" in receive(tmp_path, "s1", chunk(sha256=fake, length=3, size=3))["error"]
    assert "error" not in receive(tmp_path, "s1", chunk())
    assert (tmp_path / "s1" / "work" / "f.txt").read_bytes() == data


def test_an_object_the_home_lost_is_shipped_again_and_so_are_the_files_made_of_it(tmp_path: Path) -> None:
    """One chunk of a growing log cannot be kept at home (its write fails, as on a full disk): the daemon says so
    (``objects.missing``, tests/unit/test_objects_missing.py); the runner's next ship sends that chunk again (the
    checkpoints naming it become usable for a resume) and the log again, so once the home has room its copy is right
    from the next step on (review helper-151: the chunk was never sent again, and every later version of the log
    failed at home for good; helper-152: the log then went whole at every step). The failed file's partial copy is
    not left behind."""
    import shutil

    from labd.daemon.shipped import receive_object

    durable, shipper, events, work = _node_shipping(tmp_path)
    (work / "run.log").write_bytes(os.urandom(5 << 20))
    (work / "note.txt").write_text("small")
    durable.files.scan("n1")
    durable.checkpoint("n1", "0", "first", None)
    home = tmp_path / "home"
    chunk = next(p["name"] for k, p in events if k == "checkpoint.object" and p["size"] == 1 << 20)
    obstacle = home / "s1" / "checkpoints" / "objects" / f"{chunk}.labd-part"
    obstacle.mkdir(parents=True)  # its write fails
    lost = []
    for kind, payload in events:
        if kind == "checkpoint.object":
            if "error" in receive_object(home, "s1", payload) and payload["last"]:  # as ingest tells the runner
                lost.append(payload["name"])
        elif kind == "file.shipped":
            receive(home, "s1", payload)
    assert lost == [chunk] and not (home / "s1" / "work" / "run.log").exists()
    assert not list((home / "s1" / "work").glob("*.labd-part"))
    shipper.objects_missing({"names": [*lost, "00/never-shipped"]})  # what ingest sends, on the channel thread
    shutil.rmtree(obstacle)  # the home has room again
    events.clear()
    with open(work / "run.log", "ab") as f:
        f.write(b"more")
    durable.files.scan("n2")
    durable.checkpoint("n2", "1", "second", None)
    assert chunk in {p["name"] for k, p in events if k == "checkpoint.object"}  # sent again
    files = {p["path"] for k, p in events if k == "file.shipped" and p["last"]}
    assert files == {"run.log"}, files  # note.txt did not change and is not made of the lost chunk
    _deliver(home, events)
    assert _tree_of(home / "s1" / "work") == _tree_of(work)
    assert (home / "s1" / "checkpoints" / "objects" / chunk).is_file()


def test_a_daemon_that_does_not_take_ranges_gets_every_files_bytes(tmp_path: Path) -> None:
    """A launcher that does not say ``ship_ranges`` (a daemon older than ranges, which would refuse every such file)
    gets every file with its bytes, objects shipped all the same (``ranges`` is off unless asked for)."""
    from labd.runner.ship import Shipper

    durable, _shipper, events, work = _node_shipping(tmp_path)
    old = Shipper(work, lambda kind, payload: events.append((kind, payload)) or 0, 1 << 30, 64 * 1024)
    durable.before_checkpoint = lambda: old.ship_objects(durable.objects)
    durable.after_checkpoint = old.ship
    (work / "a.txt").write_text("with its bytes")
    durable.files.scan("n1")
    durable.checkpoint("n1", "0", "first", None)
    (shipped,) = [p for k, p in events if k == "file.shipped"]
    assert "from_object" not in shipped and base64.b64decode(shipped["data"]) == b"with its bytes"
    assert any(k == "checkpoint.object" for k, _ in events)


def test_a_range_is_never_read_through_a_link_the_session_planted(tmp_path: Path) -> None:
    """A local session's runner can write its own session directory and forge a ``from_object`` chunk: an object
    store directory (or object) it made a symlink to files outside it (another session's objects, a user's file
    named by its digest) is not read through, and nothing is copied into its work directory (review helper-151:
    another session's object was copied). Offsets and lengths that are not plain integers in range are refused
    (an offset past 64 bits raised OverflowError out of ingest)."""
    from labd.runner.checkpoint import OBJECTS_DIR

    secret = b"PIN=4711\n"
    digest = hashlib.sha256(secret).hexdigest()
    other = tmp_path / "other" / OBJECTS_DIR / digest[:2]
    other.mkdir(parents=True)
    (other / digest).write_bytes(secret)
    objects = tmp_path / "s1" / OBJECTS_DIR
    objects.mkdir(parents=True)
    (objects / digest[:2]).symlink_to(other)
    forged = {"path": "stolen.txt", "size": len(secret), "sha256": digest, "offset": 0, "length": len(secret),
              "last": True, "from_object": True}
    assert "error" in receive(tmp_path, "s1", forged)
    (objects / digest[:2]).unlink()
    (objects / digest[:2]).mkdir()
    (objects / digest[:2] / digest).symlink_to(other / digest)
    assert "error" in receive(tmp_path, "s1", forged)
    assert not (tmp_path / "s1" / "work" / "stolen.txt").exists()
    for bad in ({"offset": 1 << 64}, {"offset": None}, {"length": None}, {"length": True}, {"offset": 1.0},
                {"size": "9"}):
        assert receive(tmp_path, "s1", {**forged, **bad})["error"].startswith("refused"), bad


def test_a_resumed_runner_ships_a_grown_log_as_ranges_of_the_objects_it_came_with(tmp_path: Path) -> None:
    """A resume carries the session's objects from home to its node (``carried`` / ``unpack``), and the actor tells the
    runner their names (``at_home``): a log past 4 MiB that grows after the resume goes as ranges, its old chunks
    being at home, so a step costs its new chunk, not the whole log (review helper-151: it went whole at every step
    after a resume). The home's copy is the node's."""
    import shutil

    from labd.runner.carry import carried, unpack
    from labd.runner.checkpoint import OBJECTS_DIR

    first = tmp_path / "first"
    durable, _shipper, events, work = _node_shipping(first)
    (work / "run.log").write_bytes(os.urandom(6 << 20))
    durable.files.scan("n1")
    durable.checkpoint("n1", "0", "first", None)
    home = tmp_path / "home"
    home.mkdir()
    _deliver(home, events)
    _write_seed(home / "s1", events)
    spec = carried({"carry_from": str(home / "s1")})
    second = tmp_path / "second"
    unpack(second / "node", spec["carry"])
    at_home = [rel[len(OBJECTS_DIR) + 1:] for rel in spec["carry"] if rel.startswith(f"{OBJECTS_DIR}/")]
    (second / "node" / "work").mkdir(parents=True)
    shutil.copy(work / "run.log", second / "node" / "work" / "run.log")  # as the restore leaves it
    durable2, shipper2, events2, work2 = _node_shipping(second)
    shipper2.assume_shipped({"run.log": hashlib.sha256((work / "run.log").read_bytes()).hexdigest()})
    shipper2.assume_at_home(at_home)
    with open(work2 / "run.log", "ab") as f:
        f.write(b"after the resume")
    durable2.files.scan("n2")
    durable2.checkpoint("n2", "1", "second", None)
    (log,) = [p for k, p in events2 if k == "file.shipped" and p["last"]]
    assert log["from_object"], log
    assert _deliver(home, events2) < (1 << 20) + 64 * 1024  # the new last chunk, the index and the manifest
    assert (home / "s1" / "work" / "run.log").read_bytes() == (work2 / "run.log").read_bytes()


def test_a_chunk_past_its_files_end_or_a_link_loop_is_refused_without_harm(tmp_path: Path) -> None:
    """A chunk past the file's ``size``, or starting past what came before it, is refused, files and objects alike (a
    1-byte chunk at 4 GiB made a sparse file that was then hashed whole: 20 s of ingest; the sender chooses ``size``,
    so only chunks in order bound it); and a directory symlink loop in a local session's own work directory is refused
    (``Path.resolve`` raised RuntimeError out of ingest). Reviews helper-152 and helper-153."""
    digest = hashlib.sha256(b"x").hexdigest()
    far = {"path": "f.bin", "size": 1, "sha256": digest, "offset": 4 << 30,
           "data": base64.b64encode(b"x").decode(), "last": True}
    assert receive(tmp_path, "s1", far)["error"].startswith("refused")
    assert not (tmp_path / "s1" / "work").exists()  # refused before anything was made
    # a chunk that starts past what came before it (a hole): a claimed size is no bound, the sender chooses it
    hole = {**far, "size": 16 << 40, "offset": (16 << 40) - 1}
    assert "past the 0 bytes" in receive(tmp_path, "s1", hole)["error"]
    assert not list((tmp_path / "s1" / "work").glob("*.labd-part"))
    from labd.daemon.shipped import receive_object

    obj = {"name": f"{digest[:2]}/{digest}", "size": 16 << 40, "offset": (16 << 40) - 1, "last": True,
           "data": base64.b64encode(b"x").decode()}
    assert "past the 0 bytes" in receive_object(tmp_path, "s1", obj)["error"]
    assert "refused" in receive_object(tmp_path, "s1", {**obj, "size": 1, "offset": 1})["error"]
    work = tmp_path / "s2" / "work"
    work.mkdir(parents=True)
    (work / "loop").symlink_to(work / "loop")
    got = receive(tmp_path, "s2", {**far, "path": "loop/f.bin", "offset": 0})
    assert got["error"].startswith("refused"), got
    deleted = receive(tmp_path, "s2", {"path": "loop/f.bin", "size": 0, "sha256": "", "offset": 0, "last": True,
                                       "deleted": True})
    assert deleted["error"].startswith("refused"), deleted


def test_a_file_that_became_a_directory_and_back_follows_at_home(tmp_path: Path) -> None:
    """On the node ``out`` goes from a file to a directory holding ``out/a.txt``, and back to a file: the home's copy
    follows each time (deletions are shipped first, and the daemon removes the directories a deletion leaves
    empty). Before, ``out/a.txt`` met the old file ``out`` at home, failed, and was never shipped again; neither was
    at home (review helper-153)."""
    durable, _shipper, events, work = _node_shipping(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    for n, make in enumerate((lambda: (work / "out").write_text("a file"),
                              lambda: ((work / "out").unlink(), (work / "out").mkdir(),
                                       (work / "out" / "a.txt").write_text("in a directory")),
                              lambda: ((work / "out" / "a.txt").unlink(), (work / "out").rmdir(),
                                       (work / "out").write_text("a file again")))):
        make()
        events.clear()
        durable.files.scan(f"n{n}")
        durable.checkpoint(f"n{n}", str(n), f"step {n}", None)
        _deliver(home, events)
        assert _tree_of(home / "s1" / "work") == _tree_of(work), n


def test_a_failed_last_range_leaves_no_partial_file(tmp_path: Path) -> None:
    """The last range of a 5 MiB file cannot be served at home (its chunk is missing there): the chunks before it were
    written, and the partial file is removed, not left where downloads see it (review helper-153)."""
    from labd.daemon.shipped import receive_object

    durable, _shipper, events, work = _node_shipping(tmp_path)
    data = os.urandom(5 << 20)
    (work / "run.log").write_bytes(data)
    durable.files.scan("n1")
    durable.checkpoint("n1", "0", "first", None)
    tail = hashlib.sha256(data[4 << 20:]).hexdigest()
    last_chunk = f"{tail[:2]}/{tail}"
    home = tmp_path / "home"
    home.mkdir()
    errors = []
    for kind, payload in events:
        if kind == "checkpoint.object" and payload["name"] != last_chunk:
            receive_object(home, "s1", payload)
        elif kind == "file.shipped":
            errors.append(receive(home, "s1", payload).get("error"))
    assert errors[0] is None and errors[-1] and "not in the session's object store" in errors[-1], errors
    assert not (home / "s1" / "work" / "run.log").exists()
    assert not list((home / "s1" / "work").glob("*.labd-part"))
