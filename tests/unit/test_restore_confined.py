"""A restore never reaches outside the work directory through symlinks the session's code planted there
(labd.runner.checkpoint.restore, labd.runner.workfs): symlinked parent directories, a symlink at a file's place, a
symlink to a directory where a file belongs and symlink chains are replaced by what the manifest says (the links
themselves, never their targets), and the directory outside is left exactly as it was (found by an attack review:
`labd resume` wrote into, and removed, directories outside the work directory)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from labd.runner.checkpoint import DamagedObject, ObjectStore, restore, walk_files


def _manifest(store: ObjectStore, files: dict[str, bytes], mode: int = 0o644) -> dict[str, list[Any]]:
    return {rel: [store.put_bytes(data), len(data), mode] for rel, data in files.items()}


def _outside(tmp_path: Path) -> Path:
    """A victim directory outside the work directory: files, a subdirectory ``data`` with a file."""
    out = tmp_path / "outside"
    (out / "data").mkdir(parents=True)
    (out / "f.txt").write_bytes(b"victim f")
    (out / "victim.txt").write_bytes(b"victim file")
    (out / "data" / "keep.bin").write_bytes(b"victim data")
    (out / "deep").mkdir()
    (out / "deep" / "x.txt").write_bytes(b"victim deep")
    return out


def _state(top: Path) -> dict[str, Any]:
    """Everything about a directory tree that a stray write, chmod or removal would change: per entry its type,
    mode, mtime and (files) content, the top directory's own mtime included."""
    out: dict[str, Any] = {".": (top.stat().st_mtime_ns, top.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(top))] = (st.st_mode, st.st_mtime_ns,
                                            p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return out


def _tracked(root: Path) -> dict[str, bytes]:
    return {rel: (root / rel).read_bytes() for rel, _ in walk_files(root)}


def _restore_and_check(tmp_path: Path, plant: Any, files: dict[str, bytes]) -> Path:
    """Plant links in a work directory (``plant(work, outside)``), restore ``files``; assert the outside directory
    is untouched and the work directory's tracked files are exactly ``files``, each a real file reached through
    real directories. Returns the work directory."""
    outside = _outside(tmp_path)
    work = tmp_path / "s" / "work"
    work.mkdir(parents=True)
    store = ObjectStore(tmp_path / "s" / "objects")
    manifest = _manifest(store, files)
    plant(work, outside)
    before = _state(outside)
    restore(work, manifest, store)
    assert _state(outside) == before
    assert _tracked(work) == files
    for rel in files:
        p = work / rel
        assert not any(q.is_symlink() for q in [p, *p.parents] if q.is_relative_to(work)), rel
    assert not any(p.name.startswith(".labd-restore") for p in work.iterdir())
    return work


def test_a_symlinked_parent_directory_is_replaced_not_written_through(tmp_path: Path) -> None:
    """``sub -> outside``: the manifest's ``sub/f.txt`` is written into a real ``sub`` that replaces the link;
    ``outside/f.txt`` keeps its content and mtime (before: it was overwritten)."""
    def plant(work: Path, outside: Path) -> None:
        os.symlink(outside, work / "sub")
    work = _restore_and_check(tmp_path, plant, {"sub/f.txt": b"restored", "top.txt": b"top"})
    assert (work / "sub").is_dir() and not (work / "sub").is_symlink()


def test_a_directory_outside_is_never_removed_through_a_symlinked_parent(tmp_path: Path) -> None:
    """``sub -> outside`` and a manifest file ``sub/data`` where ``outside/data`` is a directory: the victim's
    directory stays (before: ``shutil.rmtree`` removed it)."""
    def plant(work: Path, outside: Path) -> None:
        os.symlink(outside, work / "sub")
    _restore_and_check(tmp_path, plant, {"sub/data": b"a file"})
    assert (tmp_path / "outside" / "data" / "keep.bin").read_bytes() == b"victim data"


def test_a_symlink_at_the_destination_is_replaced_itself(tmp_path: Path) -> None:
    """``f.txt -> outside/victim.txt`` (and a dangling link): restoring ``f.txt`` replaces the link with the
    file; the target keeps its content."""
    def plant(work: Path, outside: Path) -> None:
        os.symlink(outside / "victim.txt", work / "f.txt")
        os.symlink(outside / "nothing-here", work / "g.txt")
    work = _restore_and_check(tmp_path, plant, {"f.txt": b"restored f", "g.txt": b"restored g"})
    assert not (tmp_path / "outside" / "nothing-here").exists()
    assert not (work / "f.txt").is_symlink()


def test_a_symlink_to_a_directory_where_a_file_belongs_is_replaced_not_emptied(tmp_path: Path) -> None:
    """``data -> outside/data`` (a directory) where the manifest holds a file ``data``: the link is replaced by
    the file; the directory outside and its file stay."""
    def plant(work: Path, outside: Path) -> None:
        os.symlink(outside / "data", work / "data")
    _restore_and_check(tmp_path, plant, {"data": b"the file"})


def test_a_symlink_chain_is_never_followed(tmp_path: Path) -> None:
    """``a -> b -> outside`` (a link to a link inside the work directory) and ``c -> outside/deep`` two levels
    down: every file of the manifest lands in real directories of the work directory."""
    def plant(work: Path, outside: Path) -> None:
        os.symlink(outside, work / "b")
        os.symlink("b", work / "a")
        (work / "x").mkdir()
        os.symlink(outside / "deep", work / "x" / "c")
    _restore_and_check(tmp_path, plant, {"a/f.txt": b"via a", "a/deep/x.txt": b"deep", "x/c/x.txt": b"c",
                                         "x/keep.txt": b"k"})


def test_modes_of_kept_files_and_removals_stay_inside(tmp_path: Path) -> None:
    """An identical file whose mode differs gets its mode through an fd, an extra file is removed; a symlink
    beside them pointing outside is not followed for either (the outside file keeps its mode and content)."""
    outside = _outside(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    store = ObjectStore(tmp_path / "objects")
    manifest = _manifest(store, {"k.txt": b"same"}, mode=0o600)
    (work / "k.txt").write_bytes(b"same")
    os.chmod(work / "k.txt", 0o644)
    (work / "extra.txt").write_bytes(b"extra")
    os.symlink(outside / "victim.txt", work / "link.txt")
    before = _state(outside)
    assert restore(work, manifest, store) == {"removed": 1, "written": 0, "kept": 1}
    assert _state(outside) == before
    assert (work / "k.txt").stat().st_mode & 0o777 == 0o600 and not (work / "extra.txt").exists()


@pytest.mark.parametrize("rel", ["../escape.txt", "{tmp}/escape.txt", "a//b.txt", "a/./b.txt", "sub/.."])
def test_a_manifest_path_that_leaves_the_work_directory_is_refused_before_anything_changes(tmp_path: Path,
                                                                                           rel: str) -> None:
    """A manifest naming ``..``, an absolute path or empty components is refused (DamagedObject) before the work
    directory is touched: nothing is written next to it."""
    rel = rel.format(tmp=tmp_path)  # an absolute path, in the test's own directory
    work = tmp_path / "work"
    work.mkdir()
    (work / "extra.txt").write_bytes(b"stays")
    store = ObjectStore(tmp_path / "objects")
    data = b"escaped"
    manifest = {rel: [store.put_bytes(data), len(data), 0o644]}
    with pytest.raises(DamagedObject):
        restore(work, manifest, store)
    assert sorted(os.listdir(work)) == ["extra.txt"]
    assert not (tmp_path / "escape.txt").exists() and hashlib.sha256(data).hexdigest() == manifest[rel][0]
