"""Shipping a remote session's work directory back to the daemon, as events on the runner's own channel.

A runner started by the Ray launcher works in a directory on its node, which the daemon cannot read. After
every checkpoint (a completed step) and when the workflow has ended (completed, failed or cancelled -- not
after a SIGKILL), the runner sends the regular files of its work directory that changed since it last shipped
them as ``file.shipped`` events (a file deleted since is shipped as ``deleted: true``): base64 chunks of at
most :data:`CHUNK` bytes with the file's size and sha256. What is shipped is the checkpoint's manifest
(:class:`~labd.runner.checkpoint.Snapshot`), read from the checkpoint's object store: the work directory is
not walked nor hashed again (the file tracker did that once, :func:`~labd.runner.files.walk_files` decides
what is tracked, checkpointed and shipped), and a file rewritten after the checkpoint cannot be shipped
half-old, half-new. They travel like every other event (spooled, signed, acknowledged, re-sent), so a file
is either delivered whole or the session's record says which chunks are missing; the daemon writes them
under its own copy of the work directory (:mod:`labd.daemon.shipped`), where ``labd files`` and downloads look.

**A file's bytes travel once.** A remote runner also ships its checkpoints' objects home (:meth:`Shipper.ship_objects`,
before each checkpoint), and a file's content *is* such an object (a large file: its chunks and their index). So a
file whose objects this runner has shipped goes as ``file.shipped`` events with ``from_object: true`` and no
``data``, each naming a range (``offset``, ``length``) that the daemon copies from the session's object store at
home. Known to be there: the objects this runner shipped, and those a resume carried from home (the actor names them,
:meth:`Shipper.assume_at_home`); an object the daemon could not keep is said back (``objects.missing``), shipped again
and no longer counted. Only a file whose objects are not known to be there (objects past ``ship_max_bytes``, one
that failed to ship, one a former runner left on the same node) carries its bytes, and only ``ranges`` (the
launcher's ``ship_ranges``: a daemon that takes them) lets a file go as ranges at all. Before, every changed file
travelled twice, and a file growing past 4 MiB (a log) went whole at every step while its checkpoint shipped only its
new chunks.
"""

from __future__ import annotations

import base64
import collections
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labd.runner.checkpoint import Snapshot
from labd.runner.names import display, key_path, path_fields
from labd.runner.objects import ObjectStore

__all__ = ["chunk_for", "CHUNK", "FROM_OBJECT_RANGE", "MAX_HOME_NAMES", "Shipper"]

CHUNK = 512 * 1024  # raw bytes per event (~683 KiB of base64): well under max_message, one event per message
#: bytes of a file one ``from_object`` event names: the daemon copies that much per event on its ingest thread (a
#: 1 GiB file in one event would hold every session's ingest up for a second)
FROM_OBJECT_RANGE = 4 << 20
#: object names this runner remembers as shipped home (~100 bytes each); past it, files whose objects it does not
#: remember carry their bytes, as before: correct, only larger
MAX_HOME_NAMES = 200_000


def chunk_for(max_message: int | None) -> int:
    """Raw bytes per chunk so that one event (base64: 4/3, plus its envelope) fits the daemon's ``max_message``."""
    if not max_message:
        return CHUNK
    return max(1024, min(CHUNK, (max_message - 8192) * 3 // 4))


class Shipper:
    """Ships a work directory incrementally: each :meth:`ship` sends only the files of a snapshot whose content
    differs from what was shipped before, and marks the ones deleted since; ``max_bytes`` bounds the session.
    ``root`` is the work directory the snapshots describe (kept for callers; the bytes come from the snapshots)."""

    def __init__(self, root: Path, emit: Callable[..., int], max_bytes: int, chunk: int = CHUNK, *,
                 ranges: bool = False) -> None:
        """``ranges``: the daemon takes files as ranges of objects (``from_object``; the launcher says so in the
        spec, ``ship_ranges``: an older daemon would refuse every such file)."""
        self.root, self.emit, self.max_bytes, self.chunk, self.ranges = root, emit, max_bytes, chunk, ranges
        self.total = 0
        self._sent: dict[str, str] = {}  # rel -> sha256 as last shipped
        #: rel -> permission bits as last shipped; a file not here (a resume's, whose modes the seed does not name)
        #: counts as shipped with its current mode: a chmod alone ships it again, a resume does not ship everything
        self._modes: dict[str, int] = {}
        self._objects_stopped = False  # checkpoint objects went over max_bytes: none are shipped from then on
        #: names of the objects this runner shipped: at home, so a file made of them goes without its bytes
        self._home: set[str] = set()
        #: names of objects the daemon said it could not keep (``objects.missing``), noted on the channel thread
        self._missing: collections.deque[str] = collections.deque(maxlen=MAX_HOME_NAMES)
        self._lock = threading.Lock()  # concurrent steps checkpoint (and ship) from their own threads

    def assume_shipped(self, shipped: dict[str, str] | None) -> None:
        """Start from what the daemon's copy of the work directory holds (manifest key -> sha256; a resume's seed:
        :func:`labd.store.checkpoints.shipped_files`): only what differs is shipped, and what is not in a snapshot
        any more is deleted there."""
        with self._lock:
            self._sent.update({str(k): str(v) for k, v in (shipped or {}).items()})

    def assume_at_home(self, names: list[str] | None) -> None:
        """Objects known to be in the home's object store (``ab/<sha256>``, ``ab/<sha256>.chunks``: a resume's, carried
        from there to this node): files made of them go as ranges too (a log resumed past 4 MiB went whole at every
        step). Objects merely found on the node are never assumed at home: a former runner's may not have gone."""
        with self._lock:
            for name in (names or [])[:MAX_HOME_NAMES - len(self._home)]:
                self._home.add(str(name))

    def ship(self, snapshot: Snapshot) -> tuple[int, int]:
        """Ship what ``snapshot`` holds that was not shipped yet (its objects first, so its files can name them);
        returns (files, bytes of their content) shipped by this call."""
        with self._lock:
            self._ship_objects(snapshot.objects)  # the final snapshot's: no checkpoint shipped them
            return self._ship(snapshot)

    def objects_missing(self, body: dict[str, Any]) -> None:
        """The daemon's ``objects.missing``: it could not keep these objects (a full disk at home). Called on the
        channel thread, which must never wait for :attr:`_lock` (a ship holding it may wait in ``emit`` for the
        room that thread makes): only noted here, taken into account by the next ship."""
        names = body.get("names")
        if isinstance(names, list):
            self._missing.extend(str(n) for n in names[:1000])

    def _forget_missing(self, objects: ObjectStore) -> None:
        """The objects the daemon could not keep are not at home: those still on this node are shipped again (the
        checkpoints naming them become resumable again once they are kept), and the files made of them are shipped
        again too (as ranges once their objects are back, else with their bytes). Without this, every later version
        of a log whose chunk was lost there failed at home for good."""
        gone: set[str] = set()
        while self._missing:
            gone.add(self._missing.popleft())
        gone &= self._home  # names it never shipped are not its business
        if not gone:
            return
        self._home -= gone
        for rel, digest in list(self._sent.items()):
            if digest and gone.intersection(self._made_of(objects, digest)):
                self._sent[rel] = ""  # matches no content: shipped again, or deleted at home if gone meanwhile
        again = sorted(n for n in gone if (objects.root / n).is_file())
        if objects.added is not None:
            objects.added.extend(again)
        self.emit("log", {"level": "warning", "logger": "labd.runner.ship",
                          "event": f"{len(gone)} checkpoint objects were not kept at home; {len(again)} shipped "
                                   "again, with the files made of them"})

    def _ship(self, snapshot: Snapshot) -> tuple[int, int]:
        """:meth:`ship`'s files, once its objects went (which also took in what the daemon said is missing)."""
        shipped = nbytes = 0
        skipped: list[str] = []
        # deleted since shipped: the daemon's copy follows, first (a file that became a directory, or the reverse,
        # makes room at home for what replaces it; the daemon removes the directories a deletion leaves empty)
        for rel in sorted(set(self._sent) - set(snapshot.files)):
            del self._sent[rel]
            self._modes.pop(rel, None)
            self.emit("file.shipped", {**path_fields(key_path(rel)), "size": 0, "sha256": "", "offset": 0,
                                       "last": True, "deleted": True})
        for rel in sorted(snapshot.files):  # manifest keys (labd.runner.names.manifest_key)
            entry = snapshot.files[rel]
            digest, mode = str(entry[0]), _mode(entry)
            if self._sent.get(rel) == digest and self._modes.get(rel, mode) == mode:
                continue  # unchanged since shipped (content and mode): not even opened
            try:
                size = snapshot.objects.size(digest)
                if self._at_home(snapshot.objects, digest):
                    self._send_from_object(rel, size, digest, mode)  # no bytes: not counted against max_bytes
                elif self.total + size > self.max_bytes:
                    skipped.append(display(key_path(rel)))
                    continue
                else:
                    self._send(snapshot.objects, rel, size, digest, mode)
                    self.total += size
            except OSError as exc:  # an object gone or unreadable: say so, ship the rest
                self.emit("log", {"level": "warning", "event": f"file not shipped: {display(key_path(rel))}: {exc}",
                                  "logger": "labd.runner.ship"})
                continue
            self._sent[rel] = digest
            if mode is not None:
                self._modes[rel] = mode
            shipped += 1
            nbytes += size
        if skipped:
            self.emit("log", {"level": "warning", "logger": "labd.runner.ship",
                              "event": f"{len(skipped)} files not shipped back (over the {self.max_bytes}-byte "
                                       "limit): " + ", ".join(skipped[:20])})
        return shipped, nbytes

    def ship_objects(self, objects: ObjectStore) -> int:
        """Ship the objects ``objects`` wrote since the last call (``objects.added``: manifests, results, file
        contents, chunks and their indexes) as ``checkpoint.object`` events, before the checkpoint that needs them
        is recorded: the daemon keeps them in the session's object store at home, where a resume or a branch of
        the session is made. Past ``max_bytes`` no more objects are shipped, from then on (said in a ``log`` event):
        a resume or branch from a checkpoint that needs one is then refused. Returns the bytes shipped."""
        with self._lock:
            return self._ship_objects(objects)

    def _ship_objects(self, objects: ObjectStore) -> int:
        self._forget_missing(objects)
        added = objects.added
        if not added:
            return 0
        n = len(added)  # appends from other threads after this point stay for the next call
        names = added[:n]
        del added[:n]
        if self._objects_stopped:  # the chain of checkpoints is broken already: keep the budget for files
            return 0
        nbytes = 0
        for name in names:
            path = objects.root / name
            try:
                size = path.stat().st_size
                if self.total + size > self.max_bytes:
                    self._objects_stopped = True
                    self.emit("log", {"level": "warning", "logger": "labd.runner.ship",
                                      "event": f"checkpoint objects not shipped back any more (over [launcher] "
                                               f"ship_max_bytes, {self.max_bytes} bytes): this session cannot be "
                                               "resumed or branched from its next checkpoint on"})
                    return nbytes
                with open(path, "rb") as f:
                    self._send_chunks(f, "checkpoint.object", {"name": name, "size": size})
            except OSError as exc:
                self.emit("log", {"level": "warning", "logger": "labd.runner.ship",
                                  "event": f"checkpoint object not shipped: {name}: {exc}"})
                continue
            if len(self._home) < MAX_HOME_NAMES:
                self._home.add(name)
            self.total += size
            nbytes += size
        return nbytes

    def _at_home(self, objects: ObjectStore, digest: str) -> bool:
        """Is every object the content ``digest`` is made of (itself, or its chunk index and chunks) known to be at
        home (shipped by this runner, or carried from there)? Only then can the daemon copy the file from its object
        store."""
        home = self._home
        if not self.ranges or (f"{digest[:2]}/{digest}.chunks" not in home and f"{digest[:2]}/{digest}" not in home):
            return False
        names = self._made_of(objects, digest)
        return bool(names) and all(name in home for name in names)

    @staticmethod
    def _made_of(objects: ObjectStore, digest: str) -> list[str]:
        """The names of the objects the content ``digest`` is made of on this node: itself, or its chunk index and
        chunks (empty when it cannot be told)."""
        try:
            chunks = objects.chunks(digest)
        except (OSError, ValueError, KeyError, TypeError):
            return []
        if chunks is None:
            return [f"{digest[:2]}/{digest}"]
        return [f"{digest[:2]}/{digest}.chunks", *(f"{c[:2]}/{c}" for c in chunks)]

    def _send_chunks(self, f: Any, kind: str, fields: dict[str, Any]) -> None:
        """Read ``f`` (``fields["size"]`` bytes) a chunk at a time and emit each as a ``kind`` event: ``fields`` with
        its ``offset``, ``data`` (base64) and ``last`` (one empty chunk for an empty file)."""
        size, offset = int(fields["size"]), 0
        while True:
            data = f.read(self.chunk)
            last = offset + len(data) >= size or not data
            self.emit(kind, {**fields, "offset": offset, "data": base64.b64encode(data).decode(), "last": last})
            offset += len(data)
            if last:
                break

    def _send_from_object(self, rel: str, size: int, digest: str, mode: int | None = None) -> None:
        """Ship file ``rel`` as ranges of object ``digest`` the daemon has (no bytes; one event for an empty file)."""
        fields = {**_file_fields(rel, size, digest, mode), "from_object": True}
        offset = 0
        while True:
            length = min(FROM_OBJECT_RANGE, size - offset)
            last = offset + length >= size
            self.emit("file.shipped", {**fields, "offset": offset, "length": length, "last": last})
            offset += length
            if last:
                break

    def _send(self, objects: ObjectStore, rel: str, size: int, digest: str, mode: int | None = None) -> None:
        with objects.reader(digest) as f:
            self._send_chunks(f, "file.shipped", _file_fields(rel, size, digest, mode))


def _mode(entry: list[Any]) -> int | None:
    """A manifest entry's permission bits (``[sha256, size, mode]``); None for an entry without one."""
    return int(entry[2]) & 0o777 if len(entry) > 2 and isinstance(entry[2], int) else None


def _file_fields(rel: str, size: int, digest: str, mode: int | None) -> dict[str, Any]:
    """What every chunk of file ``rel`` says of it: its path, size, sha256 and permission bits (the daemon gives its
    copy that mode: shipped scripts stayed 0600, not executable, at home)."""
    fields = {**path_fields(key_path(rel)), "size": size, "sha256": digest}
    if mode is not None:
        fields["mode"] = mode
    return fields
