"""Writing a resume/branch seed on a full disk: a clear `io_error`, and nothing half-written left behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from labd.daemon.api import durable
from labd.daemon.api.base import ApiError
from labd.daemon.api.durable import write_seed
from labd.runner.durable import SEED_FILE


def test_a_seed_that_cannot_be_written_is_an_io_error_naming_the_place(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while writing the seed is refused as `io_error` with the path and errno (it was `internal: [Errno
    28]`), and the temporary file is gone; a later write works."""
    real = durable._write_new

    def full(path: Path, data: bytes) -> None:
        real(path, data[:10])  # a partial write, as a full disk leaves one
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable, "_write_new", full)
    with pytest.raises(ApiError) as err:
        write_seed(tmp_path / "s1", {"steps": []})
    assert err.value.code == "io_error" and "No space left on device" in err.value.message
    assert err.value.details["errno"] == errno.ENOSPC and err.value.details["path"] == str(tmp_path / "s1")
    assert list((tmp_path / "s1").iterdir()) == []
    monkeypatch.setattr(durable, "_write_new", real)
    write_seed(tmp_path / "s1", {"steps": []})
    assert (tmp_path / "s1" / SEED_FILE).read_bytes() == b'{"steps":[]}'
