"""For tests only: on the PYTHONPATH of a daemon (tests/integration/test_durable_files.py), it holds up the daemon's
read of a checkpoint object while ``<object>.hold`` exists, having made ``<object>.reading`` to say it is there. A
read held as long as a test needs: the daemon no longer opens a FIFO put in place of an object (it blocked a read
worker for good), which is how these tests held it before."""

import time
from pathlib import Path

import labd.runner.objects as _objects

_open_regular = _objects.open_regular  # what the objects module opens its files with


def _held(path: Path):  # noqa: ANN202 - as the function it wraps
    hold = Path(f"{path}.hold")
    if hold.exists():
        Path(f"{path}.reading").touch()
        while hold.exists():
            time.sleep(0.01)
    return _open_regular(path)


_objects.open_regular = _held
