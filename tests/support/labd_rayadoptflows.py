"""A workflow for the Ray adoption tests (tests/integration/test_ray_adopt.py): it runs until the test lets it end,
and shows its progress on the node, so a test can see it print while no daemon runs."""

from __future__ import annotations

import time
from pathlib import Path


def gated(ctx, delay: float = 0.05) -> int:
    """Print ``tick i`` every ``delay`` s and write ``i`` to ``progress`` in the work directory (on the node),
    until a file ``gate`` appears there; then print ``done`` and return how many ticks it printed."""
    i = 0
    while not Path("gate").exists():
        print(f"tick {i}", flush=True)
        Path("progress").write_text(str(i))
        i += 1
        time.sleep(delay)
    print("done", flush=True)
    return i
