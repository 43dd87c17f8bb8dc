"""Storing a scan's files as a checkpoint's objects, within caps (:func:`store_files`).

Found by attack reviews: a checkpoint copied every file whole with no cap (a ``truncate``d file filled a disk), a file
that grew by a line was stored whole again at every step with no bound per session (a 50 MiB log appended to over 10
steps: 500 MB of objects), and a file swapped for a symlink between the scan and the copy had the symlink's target,
outside the work directory, stored as the file. So:

* a checkpoint stores no file that would add more than :data:`MAX_FILE_BYTES` of new objects and at most
  :data:`MAX_NEW_BYTES` of new objects in all, and a session's objects directory grows to :data:`MAX_SESSION_BYTES` at
  most (:class:`SessionBudget`); what does not fit is left out (``file_cap``, ``checkpoint_cap``, ``session_cap``).
  All three count what a file adds to the store, by apparent size (a sparse file's holes count): a small file its
  size (nothing if its object is stored), a file stored in chunks (:data:`~labd.runner.objects.CHUNKED_FROM` bytes or
  more) the chunks of it not stored yet and its index. So a log grown past the per-file cap is still stored when its
  new tail fits, while a file rewritten entirely adds (and is charged) all of it;
* each file is opened through the work directory's :class:`~labd.runner.workfs.WorkDir` (no symlink in any component,
  a regular file only) and stored only if it holds exactly what its scan hashed: one rewritten or replaced since is
  left out (``changed``; ``unreadable`` when reading it failed), one gone since (or no longer a regular file: what a
  scan would see as gone) is simply not in the checkpoint;
* only an error of the store's side (a full disk, an I/O error writing an object) fails the checkpoint.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any, NamedTuple

from labd.runner.checkpoint import ObjectStore, SourceChanged, TooLarge
from labd.runner.names import display, manifest_key
from labd.runner.objects import CHUNKED_FROM, OverCap, index_bytes, index_least
from labd.runner.workfs import WorkDir

__all__ = ["MAX_FILE_BYTES", "MAX_NEW_BYTES", "MAX_SESSION_BYTES", "SessionBudget", "Stored", "store_files",
           "total_size"]

#: a checkpoint stores no file that would add more than this to the objects (apparent sizes: a sparse file's holes
#: count; a file stored in chunks adds the chunks not stored yet), nor new objects past MAX_NEW_BYTES in all (files
#: copied smallest first); the rest is left out, the checkpoint partial (cf. MAX_FILES)
MAX_FILE_BYTES = 1 << 30
MAX_NEW_BYTES = 2 << 30
#: a session's objects directory (what it held when the runner started, plus each checkpoint's new objects) grows to
#: at most this many bytes (apparent sizes); past it, checkpoints store only files whose object exists
MAX_SESSION_BYTES = 20 << 30


class SessionBudget:
    """What a session's checkpoints may still add to its objects directory (:data:`MAX_SESSION_BYTES`, read at each
    :meth:`take`). The directory's total is summed once, at the first :meth:`take` (one ``stat`` per object: what a
    resumed session, or a branch's linked objects, already hold), then kept by adding what is stored."""

    def __init__(self, root: Path, floor: int = 0) -> None:
        self.root = root
        #: at least this much is used: a Ray runner's store holds only what its resume carried from home, whose
        #: objects hold this much (runner/carry.py)
        self.floor = floor
        self._used: int | None = None
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        with self._lock:
            if self._used is None:
                self._used = max(total_size(self.root), self.floor)
            return self._used

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) when they do not fit."""
        used = self.used
        with self._lock:
            if size and used + size > MAX_SESSION_BYTES:
                return False
            self._used = (self._used or 0) + size
            return True

    def take_up_to(self, size: int) -> int:
        """Reserve as much of ``size`` bytes as is left (0 when nothing is); returns how much."""
        used = self.used
        with self._lock:
            got = max(0, min(size, MAX_SESSION_BYTES - (self._used if self._used is not None else used)))
            self._used = (self._used or 0) + got
            return got

    def give_back(self, size: int) -> None:
        """Return what a reservation did not use."""
        if size:
            with self._lock:
                self._used = max(0, (self._used or 0) - size)


def total_size(root: Path) -> int:
    """The apparent size of the objects under ``root`` (``ab/<sha256>``; temporary files not counted)."""
    total = 0
    try:
        with os.scandir(root) as top:
            subdirs = [e.path for e in top if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return 0
    for sub in subdirs:
        try:
            with os.scandir(sub) as it:
                for entry in it:
                    try:
                        total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


class Stored(NamedTuple):
    """What :func:`store_files` stored; ``left_out``: ``(path, size, why)``, why ``file_cap``, ``checkpoint_cap``,
    ``session_cap``, ``changed`` or ``unreadable``."""

    manifest: dict[str, list[Any]]
    total: int
    new_objects: int
    new_bytes: int
    left_out: list[tuple[str, int, str]]


def _cap_reached(adds: int, checkpoint_room: int) -> str:
    """Which cap a file that adds at least ``adds`` bytes does not fit: its own first, then the checkpoint's, else the
    session's."""
    return "file_cap" if adds > MAX_FILE_BYTES else "checkpoint_cap" if adds > checkpoint_room else "session_cap"


def store_files(objects: ObjectStore, root: Path, seen: dict[str, tuple[int, int, str]], modes: dict[str, int],
                budget: SessionBudget | None = None) -> Stored:
    """Store the files of a scan (``seen``: path -> (size, mtime_ns, sha256)) as objects; make their manifest. A file
    whose object exists costs nothing; the others are copied smallest first while they fit the caps (and ``budget``,
    the session's), counted by what each adds to the store (see the module's docstring: a file in chunks adds its chunks
    not stored yet, known once it is read; one that would add too much is read at most up to the cap, and nothing of it
    written). Each is read through the work directory
    (no symlink followed in any component) and copied only if it still holds the scan's size and digest; one that
    changed since is left out, one gone since is not in the checkpoint (unreported: it is not there). Raises OSError
    only when the store could not write a file (a full disk): never a manifest without a file that fits."""
    entries: dict[str, list[Any]] = {}
    todo: list[tuple[int, str, str]] = []
    for rel, (size, _mtime, digest) in seen.items():
        if objects.has(digest):
            entries[rel] = [digest, size]
        else:
            todo.append((size, rel, digest))
    new_objects = new_bytes = 0
    left_out: list[tuple[str, int, str]] = []
    wd: WorkDir | None = None
    try:
        for size, rel, digest in sorted(todo):
            if objects.has(digest):  # the content of a file stored just before: it costs nothing
                entries[rel] = [digest, size]
                continue
            # a whole object adds its size; a file in chunks, its chunks not stored yet (known once read) and its index
            whole = size < CHUNKED_FROM
            needs = size if whole else index_least(size)  # the least it adds (a file in chunks: its index)
            checkpoint_room = MAX_NEW_BYTES - new_bytes
            room = min(size if whole else size + index_bytes(size), MAX_FILE_BYTES, checkpoint_room)
            if room < needs:
                left_out.append((rel, size, _cap_reached(needs, checkpoint_room)))
                continue
            if wd is None:
                try:
                    wd = WorkDir(root)
                except FileNotFoundError:  # no work directory any more: none of the files is there
                    break
            if budget is not None:
                room = budget.take_up_to(room)
                if room < needs:
                    budget.give_back(room)
                    left_out.append((rel, size, "session_cap"))
                    continue
            written = 0
            try:
                # at most the size the scan saw, adding at most `room`: a file grown since is changed
                digest, written = objects.bounded(size, (wd, root), room).put_file(root / rel, digest)
            except (SourceChanged, TooLarge) as exc:
                why = exc.why if isinstance(exc, SourceChanged) else "changed"
                if why != "gone":  # gone since the scan: not part of this checkpoint
                    left_out.append((rel, size, why))
                continue
            except OverCap as exc:
                left_out.append((rel, size, _cap_reached(exc.adds, checkpoint_room)))
                continue
            except OSError as exc:  # a full disk, an I/O error...: never a manifest without the file
                raise OSError(exc.errno or errno.EIO, f"storing {display(rel)}: {exc.strerror or exc}") from exc
            finally:
                if budget is not None:
                    budget.give_back(room - written)
            if written:
                new_objects += 1
                new_bytes += written
            entries[rel] = [digest, size]
    finally:
        if wd is not None:
            wd.close()
    manifest: dict[str, list[Any]] = {}
    total = 0
    for rel in seen:  # in scan order
        if rel in entries:
            digest, size = entries[rel]
            manifest[manifest_key(rel)] = [digest, size, modes.get(rel, 0o644)]  # JSON-safe keys
            total += size
    return Stored(manifest, total, new_objects, new_bytes, left_out)
