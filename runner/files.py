"""Work-directory scanning: which files appeared or changed, with content hashes, for attribution.

The runner scans after every tool call, after every step and at the end; each new or changed file is
reported once, attributed to the node (and agent / tool) active when it was found. Unchanged files
are recognised by (size, mtime) so a scan costs a ``stat`` per file, and hashing only what changed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from labd.runner.names import display, key_path, named, path_fields
from labd.runner.workfs import WorkDir

__all__ = ["FileTracker", "file_kind", "sha256_file", "walk_files"]

_KINDS = {
    "code": {".py", ".sh", ".js", ".ts", ".r", ".jl", ".c", ".cpp", ".rs", ".go", ".java", ".ipynb", ".sql"},
    "data": {".csv", ".json", ".jsonl", ".parquet", ".npy", ".npz", ".h5", ".hdf5", ".fits", ".pkl", ".tsv",
             ".xml", ".yaml", ".yml", ".toml", ".db", ".sqlite"},
    "image": {".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf", ".eps", ".webp"},
    "text": {".txt", ".md", ".rst", ".log", ".tex", ".html"},
}
MAX_FILES = 20_000  # a runaway workflow writing millions of files must not stall every step
#: directory entries (files, directories, anything) a scan lists at most: empty directories cost time too
MAX_ENTRIES = 50_000


def file_kind(path: str) -> str:
    """A coarse kind from the file name: code, data, image, text or other."""
    ext = os.path.splitext(path)[1].lower()
    return next((kind for kind, exts in _KINDS.items() if ext in exts), "other")


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file's content, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def walk_files(root: Path, max_entries: int | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of the regular files under ``root`` that a session's work directory is made of:
    dot directories and ``__pycache__`` are skipped, symlinks, FIFOs, sockets and devices are never followed
    nor opened. The one rule for what is tracked (:class:`FileTracker`), checkpointed
    (:mod:`labd.runner.checkpoint`) and shipped back from a remote node (:mod:`labd.runner.ship`, which ships
    the checkpoint's manifest). Directories are walked in sorted order, so the order is stable. The walk is
    :meth:`labd.runner.workfs.WorkDir.walk` (iterative: no depth limit); ``max_entries`` bounds it (see there).
    A ``root`` that does not exist holds nothing."""
    try:
        wd = WorkDir(root)
    except FileNotFoundError:
        return
    with wd:
        yield from wd.walk(max_entries)


class FileTracker:
    """Remembers what the work directory looked like and reports differences as events."""

    def __init__(self, root: Path, emit: Callable[..., int]) -> None:
        self.root = root
        self._emit = emit
        self._seen: dict[str, tuple[int, int, str]] = {}  # rel path -> (size, mtime_ns, sha256)
        self._lock = threading.Lock()
        #: rel path -> permission bits, for checkpoints (labd.runner.durable); ``seen``/``lock`` expose the rest
        self.modes: dict[str, int] = {}
        self.seen = self._seen
        self.lock = self._lock
        #: steps running concurrently with a node (Context.concurrent_with); None: no concurrency known
        self.concurrent: Callable[[str | None], list[str]] | None = None
        self._within: dict[str, str | None] = {}  # agent-turn node -> the node it runs in
        #: the last scan did not see the whole work directory (a bound reached, or the walk failed): what it did
        #: not reach is not in :attr:`seen`, so a checkpoint made from it is partial (labd.runner.durable)
        self.truncated = False
        #: the warning that scans are truncated was given (once per session: a resume from a partial checkpoint
        #: sets it, its restore having said so)
        self.truncation_warned = False
        self.symlinks_warned = False  # the warning that symlinks are not checkpointed was given (once per runner)
        self._errors_warned: set[str] = set()
        #: code executions in flight (:meth:`executing`): what a scan finds meanwhile may be theirs
        self._executing = 0

    @contextmanager
    def executing(self) -> Iterator[None]:
        """Mark a code execution in flight, from just after its scan before to just before its (``exact``) scan
        after. Meanwhile other scans (a step's end, another step's tool call) leave the work directory alone:
        anything they found might be the execution's, and recording it would take it from the exact scan that
        credits it (it was recorded with no step). What they would have found is reported by the next scan."""
        with self._lock:
            self._executing += 1
        try:
            yield
        finally:
            with self._lock:
                self._executing -= 1

    def nest(self, node_id: str, parent: str | None) -> None:
        """Record that ``node_id`` (an agent turn, not a step) runs inside ``parent``."""
        self._within[node_id] = parent

    def step_of(self, node_id: str | None) -> str | None:
        """The step (not agent turn) a node runs in."""
        seen: set[str] = set()
        while node_id is not None and node_id in self._within and node_id not in seen:
            seen.add(node_id)
            node_id = self._within[node_id]
        return node_id

    def scan(self, node_id: str | None, agent: str | None = None, tool: str | None = None,
             step: str | None = None, exact: bool = False, final: bool = False) -> int:
        """Report new, changed and deleted files; returns how many were reported. ``step``: the step the
        scanning node runs in (for an agent turn's node). When another step ran concurrently since the last
        scan, a change cannot be attributed exactly: it is recorded with no node, ``ambiguous: true`` and
        the ``candidates`` (this node and the concurrent steps) rather than credited to a wrong step.
        ``exact``: the caller knows who wrote what appeared (a code execution between two scans). A scan that
        is neither ``exact`` nor ``final`` (the session's last) while an execution is in flight does nothing
        (:meth:`executing`)."""
        with self._lock:
            if self._executing and not (exact or final):
                return 0
            others = self.concurrent(step or self.step_of(node_id)) \
                if self.concurrent is not None and not exact else []
            if others:
                candidates = [node_id, *others] if node_id else others
                node_id, agent, tool = None, None, None
            attribution: dict[str, Any] = {"ambiguous": True, "candidates": candidates} if others else {}
            found = 0
            present: set[str] = set()
            stopped: str | None = None  # why the walk did not see everything
            wd: WorkDir | None = None
            walk: Generator[tuple[str, os.stat_result], None, None] | None = None
            try:
                try:
                    wd = WorkDir(self.root)
                except FileNotFoundError:  # no work directory (yet): it holds nothing
                    pass
                else:
                    walk = wd.walk(MAX_ENTRIES)
                    for rel, st in walk:
                        if len(present) >= MAX_FILES:
                            stopped = f"more than {MAX_FILES} files"
                            break
                        present.add(rel)
                        prev = self._seen.get(rel)
                        if prev is not None and prev[0] == st.st_size and prev[1] == st.st_mtime_ns:
                            # a chmod changes neither: the next checkpoint keeps the mode (a branch or resume put the
                            # old one back: a script made executable was not, a file made private was readable again)
                            self.modes[rel] = stat.S_IMODE(st.st_mode)
                            continue
                        try:  # through the fds: a symlink (or FIFO) swapped in since the walk is not read
                            digest, size, st = wd.sha256_stat(rel)  # what was hashed, not the walk's stat
                        except OSError:
                            continue
                        self._seen[rel] = (size, st.st_mtime_ns, digest)
                        self.modes[rel] = stat.S_IMODE(st.st_mode)
                        if prev is not None and prev[2] == digest:
                            continue  # touched, not changed
                        self._report("changed" if prev is not None else "created", rel, digest, size,
                                     node_id, agent, tool, attribution)
                        found += 1
                    if stopped is None and wd.truncated:
                        stopped = f"more than {MAX_ENTRIES} directory entries"
                    if wd.symlinks and not self.symlinks_warned:
                        self._warn_symlinks(wd.symlinks)
            except Exception as exc:  # noqa: BLE001 - a scan that fails must never end the runner
                stopped = "error"
                self._scan_error(exc)
            finally:
                if walk is not None:
                    walk.close()
                if wd is not None:
                    wd.close()
            self.truncated = stopped is not None
            if stopped is not None:
                if stopped != "error":
                    self._warn_truncated(stopped)
                return found  # what it did not reach may still be there: nothing is reported deleted
            # a complete walk tells what is gone
            for rel in sorted(set(self._seen) - present):
                _size, _mtime, digest = self._seen.pop(rel)
                self.modes.pop(rel, None)
                self._report("deleted", rel, digest, None, node_id, agent, tool, attribution)
                found += 1
            return found

    def _warn_symlinks(self, some: list[str]) -> None:
        """The one warning that the work directory holds symlinks, which checkpoints do not keep (regular files only,
        as do empty directories): a branch from a later step starts without them (a resume leaves them in place)."""
        self.symlinks_warned = True
        self._emit("log", {"level": "warning", "logger": "labd.runner.files",
                           "event": f"the work directory holds symlinks (e.g. {', '.join(some)}): step checkpoints "
                                    "keep regular files only (not symlinks, nor empty directories), so a branch from a "
                                    "later step starts without them; make them inside the step that uses them"}, None)

    def _warn_truncated(self, why: str) -> None:
        """The one warning (per session) that scans stop at a bound, what is left out and what it means."""
        if self.truncation_warned:
            return
        self.truncation_warned = True
        self._emit("log", {"level": "warning", "logger": "labd.runner.files",
                           "event": f"the work directory holds {why}: file scans stop there (in sorted walk order), "
                                    "so files past that point are not tracked (no file events) and not in the "
                                    "step checkpoints, which are marked partial; a resume from a partial checkpoint "
                                    "writes back what it holds and removes nothing, and a branch starts without the "
                                    "files it does not hold"}, None)

    def _scan_error(self, exc: BaseException) -> None:
        """A scan that failed (not at a bound): said once per kind of error; the runner goes on."""
        text = f"{type(exc).__name__}: {exc}"
        if text in self._errors_warned:
            return
        self._errors_warned.add(text)
        self._emit("log", {"level": "warning", "logger": "labd.runner.files",
                           "event": f"scanning the work directory failed ({text[:500]}): changes since the last scan "
                                    "may be unrecorded, and the next checkpoint is marked partial"}, None)

    def _report(self, change: str, rel: str, digest: str, size: int | None, node_id: str | None,
                agent: str | None = None, tool: str | None = None, extra: dict[str, Any] | None = None) -> None:
        """Emit one ``file.created`` / ``file.changed`` / ``file.deleted`` event (``size``: None for a deletion).
        A name that is not UTF-8 goes as its display form plus its exact bytes (:func:`~labd.runner.names.path_fields`).
        """
        where = path_fields(rel)
        payload: dict[str, Any] = {**where, "sha256": digest, "size": size, "kind": file_kind(where["path"])}
        if size is None:  # a deletion
            del payload["size"]
        if agent:
            payload["agent"] = agent
        if tool:
            payload["tool"] = tool
        if extra:
            payload.update(extra)
        self._emit(f"file.{change}", payload, node_id)

    def adopt(self, manifest: dict[str, list[Any]], recorded: dict[str, str] | None) -> int:
        """The work directory was just made exactly ``manifest`` (path -> ``[sha256, size, mode]``: a checkpoint a
        resume or branch restored). Remember its files as scanned, from the manifest's digests (no file is read;
        one ``stat`` each), so the next scan reports changes, not creations; and report, as a scan would, how it
        differs from ``recorded``, what the session's record says the directory holds (path -> sha256; empty for a
        new branch; None: report nothing). The events carry no node and ``restored: true``. Returns how many.
        Both are keyed by :func:`labd.runner.names.manifest_key` (a name that is not UTF-8 by its exact bytes)."""
        found = 0
        files = {key: (key_path(key), entry) for key, entry in manifest.items()}
        with self._lock:
            for rel, (digest, size, mode) in files.values():
                try:
                    st = (self.root / rel).stat()
                except OSError:
                    continue
                self._seen[rel] = (int(size), st.st_mtime_ns, str(digest))
                self.modes[rel] = int(mode)
            if recorded is None:
                return 0
            for key, (rel, (digest, size, _mode)) in sorted(files.items(), key=lambda kv: display(kv[1][0])):
                had = recorded.get(key)
                if had != digest:
                    self._report("changed" if had is not None else "created", rel, str(digest), int(size), None,
                                 extra={"restored": True})
                    found += 1
            for key in sorted(set(recorded) - set(files), key=lambda k: display(named(k) or k)):
                rel = named(key) or key  # a key that names no path (a damaged record) stands for itself
                self._report("deleted", rel, recorded[key], None, None, extra={"restored": True})
                found += 1
        return found
