"""File names that are not valid UTF-8 (labd.runner.names): events carry a display ``path`` plus ``path_b64`` (the
exact bytes), checkpoint manifests key such a path as NUL + base64 of its bytes, and both come back byte for byte.
Before, orjson refused the surrogate-escaped name the walk returns: the session failed at its first scan, and its
resume the same way, for good."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from labd.runner.checkpoint import ObjectStore, load_manifest, restore
from labd.runner.durable import Durable
from labd.runner.files import FileTracker
from labd.runner.names import BadKey, display, key_path, manifest_key, path_fields, path_of_event
from labd.runner.ship import Shipper
from tests.unit.durable_support import durable_ctx

_NAMES = [b"bad\xff\xfename.txt", b"sub/\x80dir/x.bin", b"plain.txt", "\u00fcn\u00efcode/\u00e9.txt".encode(),
          b"back\\xffslash", b"latin1-\xe9t\xe9.csv"]


@pytest.mark.parametrize("raw", _NAMES)
def test_a_name_round_trips_through_json_as_event_fields_and_as_manifest_key(raw: bytes) -> None:
    """Any name the walk can return (``os.fsdecode``) encodes to JSON both ways and decodes to the same bytes; a
    UTF-8 name is left exactly as it was (no ``path_b64``, its key is itself); the display form is valid text."""
    rel = os.fsdecode(raw)
    fields = orjson.loads(orjson.dumps(path_fields(rel)))
    assert os.fsencode(path_of_event(fields)) == raw
    key = orjson.loads(orjson.dumps({manifest_key(rel): 1}))
    (back,) = key
    assert os.fsencode(key_path(back)) == raw
    assert fields["path"] == display(rel) and display(rel).encode("utf-8")
    try:
        plain: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        plain = None
    if plain is not None:
        assert fields == {"path": plain} and manifest_key(rel) == plain
    else:
        assert fields["path_b64"] == base64.b64encode(raw).decode() and manifest_key(rel).startswith("\x00")
        assert "\\x" in fields["path"]


def test_names_with_the_same_display_form_stay_apart() -> None:
    """``bad\\xff`` as bytes and the UTF-8 name spelled with a backslash show the same, but their exact forms (the
    event's ``path_b64``, the manifest key) differ, so neither replaces the other."""
    raw, spelled = os.fsdecode(b"bad\xff"), "bad\\xff"
    assert display(raw) == display(spelled)
    assert path_fields(raw) != path_fields(spelled) and manifest_key(raw) != manifest_key(spelled)


@pytest.mark.parametrize("key", ["\x00!!not base64", "\x00", "\x00" + base64.urlsafe_b64encode(b"a\x00b").decode()])
def test_a_damaged_manifest_key_is_refused(key: str) -> None:
    """A NUL-prefixed key that is not the base64 of a NUL-free name raises BadKey rather than naming a file."""
    with pytest.raises(BadKey):
        key_path(key)


def _json_events(events: list[tuple[str, Any, Any]]) -> list[tuple[str, Any]]:
    """Every event as the channel would encode it (orjson): raises as the session did before."""
    return [(k, orjson.loads(orjson.dumps(p))) for k, p, _ in events]


def test_a_step_writing_a_non_utf8_name_is_tracked_checkpointed_and_restored_exactly(tmp_path: Path) -> None:
    """A step writes ``bad\\xff\\xfename.txt`` (and one in a non-UTF-8 directory): its file events and checkpoint
    encode as JSON, with the display path and the exact bytes; a restore from the checkpoint (resolved through
    JSON, as the daemon does) into a directory where the files are gone and a stray non-UTF-8 file exists puts
    back exactly those names and contents and removes the stray; the tracker's adopt reports them with
    ``path_b64``, and the shipper ships them with it."""
    ctx, events = durable_ctx(tmp_path)
    work = ctx.workdir
    bad, nested = b"bad\xff\xfename.txt", b"d\x80ir/in\xfe.bin"
    with ctx.step("write"):
        with open(os.path.join(os.fsencode(work), bad), "wb") as f:
            f.write(b"exact content")
        os.mkdir(os.path.join(os.fsencode(work), b"d\x80ir"))
        with open(os.path.join(os.fsencode(work), nested), "wb") as f:
            f.write(b"nested")
    sent = _json_events(events)
    created = {p["path_b64"]: p for k, p in sent if k == "file.created"}
    assert sorted(base64.b64decode(b) for b in created) == sorted([bad, nested])
    assert created[base64.b64encode(bad).decode()]["path"] == "bad\\xff\\xfename.txt"
    (cp,) = [p for k, p in sent if k == "step.checkpoint"]
    objects = tmp_path / "s" / "checkpoints" / "objects"
    inline = {cp["manifest"]: cp["manifest_delta"]} if cp.get("manifest_delta") else {}
    manifest = orjson.loads(orjson.dumps(load_manifest(
        lambda h: inline.get(h) or orjson.loads((objects / h[:2] / h).read_bytes()), cp["manifest"])[0]))
    other = tmp_path / "other"
    other.mkdir()
    with open(os.path.join(os.fsencode(other), b"stray\xff"), "wb") as f:
        f.write(b"stray")
    assert restore(other, manifest, ObjectStore(objects)) == {"removed": 1, "written": 2, "kept": 0}
    on_disk = {os.path.relpath(os.path.join(d, n), os.fsencode(other)): Path(os.fsdecode(os.path.join(d, n)))
               .read_bytes() for d, _dirs, names in os.walk(os.fsencode(other)) for n in names}
    assert on_disk == {bad: b"exact content", nested: b"nested"}
    adopted: list[tuple[str, Any, Any]] = []
    tracker = FileTracker(other, lambda k, p, n=None, parent=None: adopted.append((k, p, n)) or 0)
    # the record's files by manifest key (store.checkpoints.recorded_files): a non-UTF-8 name by its bytes, so the
    # file literally named `bad\xff\xfename.txt` (backslashes) is another file, which the restore deletes
    recorded = {manifest_key(os.fsdecode(bad)): "0" * 64, manifest_key(os.fsdecode(b"stray\xff")): "1" * 64,
                "bad\\xff\\xfename.txt": "2" * 64}
    assert tracker.adopt(manifest, recorded) == 4
    assert sorted((k, p["path"], p.get("path_b64")) for k, p in _json_events(adopted)) == [
        ("file.changed", "bad\\xff\\xfename.txt", base64.b64encode(bad).decode()),
        ("file.created", "d\\x80ir/in\\xfe.bin", base64.b64encode(nested).decode()),
        ("file.deleted", "bad\\xff\\xfename.txt", None),
        ("file.deleted", "stray\\xff", base64.b64encode(b"stray\xff").decode())]
    assert tracker.scan(None) == 0  # remembered under their real names: nothing new on the next scan
    shipped: list[Any] = []
    d = Durable(lambda *a, **k: 0, tmp_path / "s", work, ctx.durable.files)
    Shipper(work, lambda k, p: shipped.append(orjson.loads(orjson.dumps(p))) or 0, 1 << 20).ship(d.snapshot())
    assert sorted(base64.b64decode(p["path_b64"]) for p in shipped) == sorted([bad, nested])
