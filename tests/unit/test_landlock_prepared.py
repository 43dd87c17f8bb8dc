"""A spare runner's work ahead of its session (runner/spare.py): the Landlock walk is reused only while no
listed directory changed, and a ruleset prepared before the spec confines exactly like a fresh one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from labd.runner.sandbox import landlock


def test_a_walk_is_reused_while_fresh_and_redone_when_a_listed_directory_changes(tmp_path: Path) -> None:
    """Same deny list, nothing changed: the same walk. A new entry beside a denied path: a new walk that
    grants it (a cached walk never hides a path a fresh walk would grant, nor grants a denied one)."""
    (tmp_path / "secret").mkdir()
    (tmp_path / "old").mkdir()
    deny = [str(tmp_path / "secret")]
    # The walk lists every ancestor of tmp_path, /tmp among them, where other tests (the other pytest worker)
    # create directories at any moment: each one makes the walk new (extended) once. So look for reuse across a
    # quiet moment, a bounded number of times; a walk that is never reused fails.
    for _ in range(200):
        first = landlock.walk(deny)
        if landlock.walk(deny) is first:
            break
    else:
        raise AssertionError("a walk was never reused, even with nothing changed between two calls")
    assert str(tmp_path / "old") in first.roots and str(tmp_path / "secret") not in first.roots
    (tmp_path / "new").mkdir()
    second = landlock.walk(deny)
    assert second is not first
    assert str(tmp_path / "new") in second.roots
    assert landlock.allowed_roots(deny, allow=[str(tmp_path / "secret" / "mine")])[-1] == \
        str(tmp_path / "secret" / "mine")


def _reference_walk(root: str, denied: list[str]) -> tuple[list[str], list[str]]:
    """The walk as first written: each path compared with every denied path (the rule, spelt out)."""
    def under(path: str, top: str) -> bool:
        return path == top or path.startswith(top.rstrip("/") + "/")

    roots: list[str] = []
    met: list[str] = []

    def visit(path: str) -> None:
        if any(under(path, d) for d in denied):
            met.append(path)
        elif not any(under(d, path) for d in denied):
            roots.append(path)
        else:
            for entry in os.scandir(path):
                if not entry.is_symlink():
                    visit(entry.path)
    visit(root)
    return roots, met


@pytest.mark.parametrize("seed", range(6))
def test_a_walk_grants_and_hides_what_comparing_every_denied_path_would(tmp_path: Path, seed: int) -> None:
    """The walk finds what it must hide with two set lookups per entry (a user with 60 homes made every runner's
    start compare each of ~4,000 entries with ~70 denied paths: ~100 ms). On random trees and deny lists (nested
    denied paths, a denied path that does not exist, one whose name is a prefix of a sibling's, symlinks), it
    grants and meets exactly what the first, path-by-path version did."""
    import random

    rng = random.Random(seed)
    dirs = [tmp_path]
    for i in range(120):
        parent = rng.choice(dirs)
        child = parent / rng.choice(["a", "ab", "b", f"d{i}", f"x{i}"])
        if child.exists():
            continue
        if rng.random() < 0.7:
            child.mkdir()
            dirs.append(child)
        elif rng.random() < 0.5:
            child.write_text("f")
        else:
            child.symlink_to(rng.choice(dirs))
    denied = sorted({str(rng.choice(dirs[1:])) for _ in range(rng.randint(1, 8))}
                    | {str(tmp_path / "gone" / "home")})
    walker = landlock._Walker(tuple(denied))
    walker.visit(str(tmp_path))
    roots, met = _reference_walk(str(tmp_path), denied)
    assert (sorted(walker.roots), sorted(walker.met)) == (sorted(roots), sorted(met))
    assert walker.met and walker.roots  # the case is not empty: something is hidden, something granted


def test_an_extended_walk_grants_and_hides_what_a_fresh_one_would(tmp_path: Path) -> None:
    """A walk brought up to date after entries were only added (``_extend``: the new entries visited with the same
    set lookups) grants and meets below ``tmp_path`` what the path-by-path rule gives for the tree as it is now: a
    new sibling is granted, a new directory above a denied path that did not exist is listed (its other entries
    granted, the denied path hidden once it appears)."""
    (tmp_path / "home").mkdir()
    (tmp_path / "a").mkdir()
    denied = [str(tmp_path / "home"), str(tmp_path / "later" / "home")]

    def below(paths: list[str]) -> list[str]:
        return sorted(p for p in paths if p == str(tmp_path) or p.startswith(str(tmp_path) + "/"))

    first = landlock.walk(denied)
    assert below(first.roots) == [str(tmp_path / "a")]
    (tmp_path / "ab").mkdir()
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "other").mkdir()
    (tmp_path / "later" / "home").mkdir()
    second = landlock.walk(denied)
    roots, met = _reference_walk(str(tmp_path), denied)
    assert below(second.roots) == sorted(roots)
    assert below(second.met) == sorted(met)
    assert str(tmp_path / "later" / "other") in second.roots and str(tmp_path / "later") not in second.roots


def _confined_child(prepare: list[str] | None, confine: dict[str, Any], probes: list[str],
                    before: Any = None) -> dict[str, Any]:
    """Fork; in the child, optionally prepare (as a spare does), run ``before``, confine, then try to read
    each probe. Returns {"mode": ..., probe: "ok" | "denied"}."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            from labd.runner import credentials

            if prepare is not None:
                credentials.prepare_confinement(prepare)
            if before is not None:
                before()
            res: dict[str, Any] = {"mode": credentials.confine_runner(confine)}
            for p in probes:
                try:
                    Path(p).read_text()
                    res[p] = "ok"
                except OSError:
                    res[p] = "denied"
            os.write(w, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)  # type: ignore[no-any-return]


@pytest.mark.skipif(landlock.abi_version() < 1, reason="no Landlock in this kernel")
@pytest.mark.parametrize("case", ["prepared", "fresh", "other_hide", "stale", "moved_in"])
def test_a_prepared_ruleset_confines_like_a_fresh_one(tmp_path: Path, case: str) -> None:
    """Whether the runner's ruleset was built ahead (the spare), fresh, prepared for another deny list, or
    prepared before the filesystem changed: the hidden tree is unreadable except the session's own
    directory, and the rest (including a directory made after the preparation) is readable. A directory
    granted when prepared and then moved into the hidden tree is not readable there (rules follow inodes:
    a removed or renamed entry forces a new ruleset, not an extension)."""
    home = tmp_path / "labd"
    (home / "sessions" / "s1").mkdir(parents=True)
    (home / "sessions" / "s2").mkdir(parents=True)
    (home / "sessions" / "s1" / "f").write_text("mine")
    (home / "sessions" / "s2" / "f").write_text("other session")
    (home / "daemon.key").write_text("key")
    (tmp_path / "open.txt").write_text("open")
    later = tmp_path / "later"

    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f").write_text("granted when prepared")

    def make_later() -> None:
        later.mkdir()
        (later / "f").write_text("made after the spare was prepared")

    def move_in() -> None:
        os.rename(tmp_path / "outside", home / "moved")

    hide = [str(home)]
    prepare = {"prepared": hide, "fresh": None, "other_hide": [str(home / "sessions")], "stale": hide,
               "moved_in": hide}[case]
    probes = [str(home / "sessions" / "s1" / "f"), str(home / "sessions" / "s2" / "f"), str(home / "daemon.key"),
              str(tmp_path / "open.txt")] + ([str(later / "f")] if case == "stale" else []) + \
        ([str(home / "moved" / "f")] if case == "moved_in" else [])
    res = _confined_child(prepare, {"hide": hide, "allow": [str(home / "sessions" / "s1")]}, probes,
                          before={"stale": make_later, "moved_in": move_in}.get(case))
    assert res.pop("mode") == "landlock"
    expected = {probes[0]: "ok", probes[1]: "denied", probes[2]: "denied", probes[3]: "ok"}
    if case == "stale":
        expected[probes[4]] = "ok"
    if case == "moved_in":
        expected[probes[4]] = "denied"
    assert res == expected


@pytest.mark.skipif(landlock.abi_version() < 1, reason="no Landlock in this kernel")
def test_a_waiting_spare_redoes_a_stale_preparation(tmp_path: Path) -> None:
    """What a spare prepared is redone when a directory its walk listed changes while it waits (so the
    request does not pay for the walk), and left alone while nothing changed. Nothing is enforced here."""
    from labd.runner import credentials
    from labd.runner.spare import refresh

    (tmp_path / "labd").mkdir()
    hide = [str(tmp_path / "labd")]
    try:
        # The walk lists every ancestor, /tmp too, where tests running beside this one add entries: a round in
        # which a listed directory changed (the walk is no longer fresh afterwards) says nothing, and is tried again.
        # A listed directory's mtime never comes back to its old value, so fresh afterwards means fresh before.
        for _ in range(100):
            credentials.prepare_confinement(hide)
            first = credentials._prepared
            assert first is not None
            refresh({"confine_hide": hide})
            if first[1].fresh():
                assert credentials._prepared is first  # nothing changed: kept
                break
        else:
            pytest.fail("the walk's directories changed in each of 100 rounds")
        (tmp_path / "new").mkdir()
        assert not first[1].fresh()
        refresh({"confine_hide": hide})
        again = credentials._prepared
        # redone, from the directories as they are now (whether it is still fresh a moment later depends on /tmp,
        # which tests beside this one change: asking that failed once with two test workers)
        assert again is not None and again is not first
        assert str(tmp_path / "new") in again[1].roots
    finally:
        credentials._take_prepared(None)


@pytest.mark.parametrize("path", ["/tmp/a/", "//tmp/a", "tmp/a", "/tmp/./a", "/tmp/b/../a", b"/tmp/a"])
def test_a_walk_refuses_a_denied_path_it_could_not_match_exactly(path: object) -> None:
    """The walk's set lookups are exact only for absolute, normalised paths (``walk`` resolves every denied path
    first); given another spelling directly, it refuses rather than grant what that path names (review helper-158:
    ``"T/a/"`` would have left ``T/a/secret`` readable, a bytes path would have granted ``/``)."""
    with pytest.raises(ValueError, match="absolute and normalised"):
        landlock._Walker((path,))  # type: ignore[arg-type]
