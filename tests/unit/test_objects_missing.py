"""A checkpoint object a remote runner ships that the daemon cannot keep at home (a full disk, an I/O error) is said
back to the runner (``objects.missing``), with the real ingest thread (tests/support/ingest_rig.py): the runner's
shipper then ships the files made of it with their bytes again (tests/integration/test_ray_shipped.py)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator

import pytest

from labd.runner.checkpoint import OBJECTS_DIR
from tests.conftest import wait_until
from tests.support.ingest_rig import SID, Rig


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig(None)
    try:
        yield r
    finally:
        r.close()


def test_an_object_the_home_cannot_keep_is_said_back_to_its_runner(rig: Rig) -> None:
    """The home's object store cannot take one object (its partial file's name is a directory: the write fails as
    on a full disk): the stored ``checkpoint.object`` says why, and the runner is sent ``objects.missing`` naming
    it; an object that is kept is not named."""
    rig.create({})
    bad, good = b"cannot be kept", b"kept"
    names = [f"{hashlib.sha256(d).hexdigest()[:2]}/{hashlib.sha256(d).hexdigest()}" for d in (bad, good)]
    (rig.tmp / SID / OBJECTS_DIR / f"{names[0]}.labd-part").mkdir(parents=True)
    rig.send([("checkpoint.object", None, {"name": name, "size": len(data), "offset": 0, "last": True,
                                           "data": base64.b64encode(data).decode()})
              for name, data in zip(names, (bad, good), strict=True)])
    wait_until(lambda: rig.read_control(0.2), timeout=20, what="objects.missing")
    assert rig.control == [("objects.missing", {"names": [names[0]]})]
    errors = [p.get("error") for p in rig.payloads("checkpoint.object")]
    assert errors[0] and "not written" in errors[0] and errors[1] is None, errors
    assert (rig.tmp / SID / OBJECTS_DIR / names[1]).read_bytes() == good


def test_the_runner_is_told_also_when_the_batch_is_written_event_by_event(rig: Rig) -> None:
    """After the store refused a batch (any session's bad row does), ingest commits its events one at a time ("safe
    mode"): what they tell runners after the commit (``objects.missing``, an approval's resolution) is still sent
    (review helper-152: ``Batch.merge`` dropped it)."""
    import sqlalchemy.exc as sa_exc

    rig.create({})
    real = rig.ing.writer.commit
    refused: list[int] = []

    def commit(rows, changes, cursors, plain=(), noded=()):  # type: ignore[no-untyped-def]
        if not refused and any("checkpoint.object" in tuple(r) for r in [*rows, *plain, *noded]):
            refused.append(1)
            raise sa_exc.StatementError("refused (injected)", "INSERT", {}, ValueError("bad row"))
        return real(rows, changes, cursors, plain, noded)
    rig.ing.writer.commit = commit  # type: ignore[method-assign]
    bad = b"cannot be kept"
    digest = hashlib.sha256(bad).hexdigest()
    name = f"{digest[:2]}/{digest}"
    (rig.tmp / SID / OBJECTS_DIR / f"{name}.labd-part").mkdir(parents=True)
    rig.send([("checkpoint.object", None, {"name": name, "size": len(bad), "offset": 0, "last": True,
                                           "data": base64.b64encode(bad).decode()})])
    wait_until(lambda: rig.read_control(0.2), timeout=20, what="objects.missing")
    assert refused and rig.control == [("objects.missing", {"names": [name]})]
