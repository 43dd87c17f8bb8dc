"""Large files in the checkpoint object store are stored in 1 MiB chunks (runner/objects.py): a file that grows by
appends (a log, a results table) costs each checkpoint its new tail only, every reader (restore, a branch's links,
the Ray shipper) gets the exact bytes back, and a missing chunk is reported, never restored as a wrong file."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from labd.daemon.api.seed import link_objects
from labd.runner.checkpoint import DamagedObject, ObjectStore, Snapshot, SourceChanged, restore
from labd.runner.objects import CHUNK_BYTES, CHUNKED_FROM
from labd.runner.ship import Shipper

_MIB = 1 << 20


def _sha(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _apparent(root: Path) -> int:
    return sum(p.stat().st_size for p in _files(root))


def test_a_file_that_grows_by_appends_stores_only_its_new_tail(tmp_path: Path) -> None:
    """A 9 MiB log stored, then stored again after 100 KB were appended: the second copy writes its last chunk and
    the new one (under 2 MiB with its index), not 9 MiB again (before chunks it did, at every step); both versions
    read back exactly and restore exactly, each from its own manifest."""
    store = ObjectStore(tmp_path / "objects")
    log = tmp_path / "work" / "train.log"
    log.parent.mkdir()
    log.write_bytes(os.urandom(9 * _MIB + 12345))
    first, first_data = _sha(log), log.read_bytes()
    assert store.put_file(log, first)[1] >= 9 * _MIB
    with open(log, "ab") as f:
        f.write(os.urandom(100_000))
    second = _sha(log)
    digest, written = store.put_file(log, second)
    assert digest == second and written < 2 * _MIB, written
    assert _apparent(store.root) < 12 * _MIB
    assert store.complete(first) and store.complete(second) and store.size(second) == log.stat().st_size
    with store.reader(first) as f:
        assert f.read() == first_data
    for version, data in ((first, first_data), (second, log.read_bytes())):
        again = tmp_path / f"again-{version[:6]}"
        restore(again, {"train.log": [version, len(data), 0o644]}, store)
        assert (again / "train.log").read_bytes() == data


def test_a_missing_chunk_is_reported_and_the_work_directory_left_as_it_was(tmp_path: Path) -> None:
    """One chunk of a stored file removed since: the object is not ``complete`` (a resume refuses the checkpoint),
    and a restore raises DamagedObject naming the file, leaving the work directory's own version untouched."""
    store = ObjectStore(tmp_path / "objects")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(CHUNKED_FROM + 3 * CHUNK_BYTES))
    digest = _sha(src)
    store.put_file(src, digest)
    chunks = store.chunks(digest)
    assert chunks is not None and len(chunks) == 7
    os.chmod(store.path(chunks[5]).parent, 0o700)
    store.path(chunks[5]).unlink()
    assert store.has(digest) and not ObjectStore(store.root).complete(digest)
    work = tmp_path / "work"
    work.mkdir()
    (work / "big.bin").write_text("the current version")
    with pytest.raises(DamagedObject) as err:
        restore(work, {"big.bin": [digest, src.stat().st_size, 0o644]}, ObjectStore(store.root))
    assert "big.bin" in str(err.value) and "chunk" in str(err.value)
    assert (work / "big.bin").read_text() == "the current version"


def test_a_file_changed_while_its_chunks_are_written_stores_nothing(tmp_path: Path) -> None:
    """The file no longer holds the digest its scan saw: SourceChanged, and not one chunk, index or temporary file
    is left in the store (its chunks are renamed in only once the whole file has proven to be the scanned one)."""
    store = ObjectStore(tmp_path / "objects")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(CHUNKED_FROM + 5))
    with pytest.raises(SourceChanged):
        store.put_file(src, "0" * 64)
    assert _files(store.root) == []


def test_a_branch_links_a_chunked_file_and_the_shipper_sends_it_whole(tmp_path: Path) -> None:
    """A branch's directory gets a chunked object's index and chunks linked (daemon/api/durable.py), and reads the
    file back from its own store; a Ray runner's shipper sends the file from a chunked object, byte for byte."""
    parent = ObjectStore(tmp_path / "parent")
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(CHUNKED_FROM + _MIB // 2))
    digest = _sha(src)
    parent.put_file(src, digest)
    link_objects(parent.root, tmp_path / "branch", {digest})
    branch = ObjectStore(tmp_path / "branch")
    assert branch.complete(digest)
    with branch.reader(digest) as f:
        assert f.read() == src.read_bytes()
    sent: list[dict[str, Any]] = []
    shipper = Shipper(tmp_path, lambda kind, payload: sent.append(payload) or 0, 1 << 30)
    shipper.ship(Snapshot({"data.bin": [digest, src.stat().st_size, 0o644]}, branch))
    assert b"".join(base64.b64decode(e["data"]) for e in sent) == src.read_bytes()
    assert sent[-1]["last"] and sent[-1]["sha256"] == digest


def test_a_digest_that_is_not_a_sha256_never_names_a_path(tmp_path: Path) -> None:
    """Digests come from manifests and chunk indexes the session's runner wrote: a branch's link step (run by the
    daemon, unconfined) given ``../../daemon.key``-like digests, directly or in a forged chunk index, refuses with
    ``no_checkpoint`` and links nothing (before: the daemon hard-linked the named file into the branch's objects,
    where the branch's code could read it); such an object is never ``complete``, and a restore of it is damaged."""
    from labd.daemon.api.base import ApiError

    secret = tmp_path / "daemon.key"
    secret.write_text("the daemon's key")
    parent = ObjectStore(tmp_path / "s" / "objects")
    parent.root.mkdir(parents=True)
    traversal = "../daemon.key"  # objects/.. / ../daemon.key: the file beside the session directory
    forged = "ab" * 32
    (parent.root / "ab").mkdir()
    (parent.root / "ab" / f"{forged}.chunks").write_text(
        '{"size": 16, "chunk": 1048576, "chunks": ["../../../daemon.key"]}')
    for digest in (traversal, forged):
        with pytest.raises(ApiError) as err:
            link_objects(parent.root, tmp_path / "branch", {digest})
        assert err.value.code == "no_checkpoint"
        assert not parent.complete(digest)
        with pytest.raises(DamagedObject):
            restore(tmp_path / f"work-{digest[:2]}", {"f": [digest, 16, 0o644]}, parent)
    assert not (tmp_path / "branch").exists() or _files(tmp_path / "branch") == []
