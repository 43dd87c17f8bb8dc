"""The seed a continuing runner is handed (``<session dir>/durable.seed.json``), made by the daemon for
``session.resume`` of an ended session and for ``session.branch`` (:func:`write_seed` also writes a replay's
``replay.json``): the completed steps of the record by position,
the work directory to restore, the result and file objects checked to be there (and, up to a bound, intact), and
for a branch the parent's objects linked into the new session's directory. Files only, run on a worker thread
(daemon/reads.py); the requests themselves are in :mod:`labd.daemon.api.durable`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from labd.daemon.api.base import ApiError
from labd.ipc.safe_files import UnsafePath, open_beneath, open_regular
from labd.runner.carry import needed_objects
from labd.runner.checkpoint import OBJECTS_DIR, ObjectStore, load_manifest, load_manifests
from labd.runner.durable import SEED_FILE
from labd.runner.objects import read_json_object

__all__ = ["VERIFY_BYTES", "branch_dirs", "build_seed", "link_objects", "write_seed"]

#: result objects are checked against their sha256 before a resume or branch up to this many bytes in all
#: (past it only that they exist: the runner checks each one it loads, and runs its step again if damaged)
VERIFY_BYTES = 16 << 20


def build_seed(cps: list[dict[str, Any]], objects: Path, step_files: bool = False, **extra: Any) -> dict[str, Any]:
    """The record for a runner: completed steps by position, and the work directory of the last checkpoint
    (resolved here: small manifest changes are in the events, larger ones and whole manifests are objects).
    With ``step_files`` (a branch), each step also carries the work directory as its checkpoint recorded it: the
    branch records it as its own checkpoint of the step it reuses, which a branch of the branch restores.
    Refused (``no_checkpoint``) when an object the runner needs is gone, or a result object is damaged."""
    inline = {c["manifest"]: c["manifest_delta"] for c in cps if isinstance(c.get("manifest_delta"), dict)}

    store = ObjectStore(objects)

    def get_json(h: str) -> Any:  # a digest that is no sha256 (a forged record): ValueError, refused below
        return inline[h] if h in inline else read_json_object(store.path(h))

    steps: dict[str, dict[str, Any]] = {}
    try:
        # each step's manifest resolved from the previous one's (one link each, not its whole chain)
        resolved = load_manifests(get_json, [c["manifest"] for c in cps if c.get("manifest")]) if step_files else {}
        for c in cps:
            if c.get("result_error"):  # its result could not be kept: it runs again
                continue
            steps[c["path"]] = {"name": c["name"], "node": c["node_id"], "result": c.get("result"),
                                "result_inline": c.get("result_inline"), "result_preview": c.get("result_preview")}
            if step_files and c.get("manifest"):
                steps[c["path"]]["files"] = resolved[c["manifest"]]
                if c.get("partial"):  # a branch's record of it is partial too
                    steps[c["path"]]["partial"] = True
    except (OSError, ValueError, KeyError):
        raise ApiError("no_checkpoint", "the checkpoint files of this session are gone") from None
    seed: dict[str, Any] = {"steps": steps, "manifest": None, **extra}
    if cps:
        try:
            files, chain, depth = load_manifest(get_json, cps[-1]["manifest"])
        except (OSError, ValueError, KeyError):
            raise ApiError("no_checkpoint", "the checkpoint files of this session are gone") from None
        seed.update(manifest=cps[-1]["manifest"], files=files, depth=depth,
                    chain=[h for h in chain if h not in inline])
        if cps[-1].get("partial"):  # its scan stopped at a bound: the runner's restore removes nothing it lacks
            seed["partial"] = True
        _check_objects(steps, files, objects, cps[-1])
    return seed


def _check_objects(steps: dict[str, dict[str, Any]], files: dict[str, list[Any]], objects: Path,
                   last: dict[str, Any]) -> None:
    """Every result object of ``steps`` exists and (up to :data:`VERIFY_BYTES`) matches its sha256; every
    file object of the work directory's manifest exists (hashing those is the runner's, as it restores)."""
    budget, store = VERIFY_BYTES, ObjectStore(objects)
    for st in steps.values():
        digest = st.get("result")
        if not digest:
            continue
        try:
            path = store.path(digest)
        except ValueError:  # not a sha256: a forged record
            raise ApiError("no_checkpoint", f"the checkpoint of step {st['name']!r} ({st['node']}) names a result "
                           f"that is not an object ({str(digest)[:80]!r})", {"node": st["node"]}) from None
        try:
            size = path.stat().st_size
            damaged = False
            if size <= budget:
                budget -= size
                with open_regular(path) as f:  # a regular file, not through a symlink, never blocking
                    damaged = hashlib.file_digest(f, "sha256").hexdigest() != digest
        except OSError as exc:
            raise ApiError("no_checkpoint", f"the checkpoint of step {st['name']!r} ({st['node']}) cannot be used: "
                           f"its result object {digest[:12]} is gone ({exc.strerror or exc})",
                           {"node": st["node"], "step": st["name"]}) from None
        if damaged:
            raise ApiError("no_checkpoint", f"the checkpoint of step {st['name']!r} ({st['node']}) cannot be used: "
                           f"its result object {digest[:12]} is damaged (its content does not match its sha256)",
                           {"node": st["node"], "step": st["name"]})
    for rel, entry in files.items():
        digest = str(entry[0])
        if not store.complete(digest):  # stored whole, or its chunk index and every chunk
            raise ApiError("no_checkpoint", f"the checkpoint of step {last['name']!r} ({last['node_id']}) cannot be "
                           f"used: the object of its file {rel!r} ({digest[:12]}) is gone",
                           {"node": last["node_id"], "step": last["name"], "file": rel})


def _write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to a file made anew at ``path`` (refused if anything, a symlink included, is there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)


def write_seed(session_dir: Path, seed: dict[str, Any], name: str = SEED_FILE) -> None:
    """Write the seed in ``session_dir`` (``name``: a replay's is ``replay.json``). The directory is the session's
    runner's to write (the workflow's code): the temporary file is made anew (``O_EXCL``, ``O_NOFOLLOW``), never opened
    through what is at its name (a symlink planted there had the daemon overwrite any file of the user with the seed).
    A write that fails (a full disk) is ``io_error``, the temporary file removed."""
    tmp = session_dir / (name + ".tmp")
    try:
        session_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        _write_new(tmp, orjson.dumps(seed))
        os.replace(tmp, session_dir / name)
    except OSError as exc:  # a full disk: said as such, not as an internal error
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ApiError("io_error", f"could not write {name} in {session_dir}: {exc.strerror or exc}",
                       {"path": str(session_dir), "errno": exc.errno}) from None


def link_objects(src: Path, dst: Path, digests: set[str]) -> None:
    """Make the parent's objects the branch's (hard links: objects are write-once and read-only); a file stored in
    chunks is its index and its chunks."""
    parent = ObjectStore(src)
    # a session's objects are opened from its directory down: its code may make `checkpoints` a symlink too
    base, prefix = (src.parent.parent, f"{OBJECTS_DIR}/") if src.as_posix().endswith(f"/{OBJECTS_DIR}") else (src, "")
    for digest in digests:
        try:
            parts = parent.parts(digest)
        except (ValueError, KeyError, TypeError):  # no sha256, or a chunk index naming anything else: forged
            raise ApiError("no_checkpoint", f"a checkpoint of session {src.parent.parent.name} names an object that "
                           f"is not one ({str(digest)[:80]!r}): its record was tampered with") from None
        for part in parts:
            b = dst / part
            if os.path.lexists(b):
                continue
            b.parent.mkdir(parents=True, exist_ok=True)
            # The parent's objects are in its directory, which its code could write: a symlink put in an object's
            # place (to the daemon's key, or a device that never ends) was followed by the copy below, into the
            # branch's own directory. So the object is opened first, never through a symlink, a regular file only,
            # and what is linked or copied is that open file.
            try:
                with open_beneath(base, f"{prefix}{part}", links_ok=True) as f:
                    _link_or_copy(f, b)
            except UnsafePath as exc:
                raise ApiError("no_checkpoint", f"a checkpoint object of session {base.name} is not a file of its "
                               f"own ({exc}): its checkpoints were tampered with") from None


def _link_or_copy(f: BinaryIO, dst: Path) -> None:
    """Make ``dst`` the open regular file ``f`` (a hard link to it, through its fd: never its name again), or a copy
    of it made anew (``O_EXCL``, ``O_NOFOLLOW``, 0600) where a link cannot be (another file system, too many links)."""
    dir_fd = os.open(dst.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:  # linkat(AT_FDCWD, "/proc/self/fd/N", dir_fd, name, AT_SYMLINK_FOLLOW): the file the fd holds
            os.link(f"/proc/self/fd/{f.fileno()}", dst.name, dst_dir_fd=dir_fd, follow_symlinks=True)
            return
        except OSError:
            pass
        out = os.open(dst.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=dir_fd)
        with open(out, "wb") as w:
            shutil.copyfileobj(f, w, 1 << 20)
    finally:
        os.close(dir_fd)


def branch_dirs(psid: str, src: Path, seed: dict[str, Any], dirs: list[Path]) -> None:
    """Each new branch's session directory: the parent's objects it needs (linked) and its seed, written before its
    ``session.created`` (a restart that re-queues it finds it). On a worker (files only); a branch that could not be
    prepared leaves nothing, nor do the others."""
    digests = needed_objects(seed)  # with each reused step's own files: a branch of this branch may restore them
    try:
        for session_dir in dirs:
            try:
                link_objects(src, session_dir / OBJECTS_DIR, digests)
            except OSError as exc:
                raise ApiError("no_checkpoint", f"the checkpoint files of session {psid} cannot be read: "
                               f"{exc}") from None
            write_seed(session_dir, seed)
    except ApiError:
        for session_dir in dirs:
            shutil.rmtree(session_dir, ignore_errors=True)
        raise
