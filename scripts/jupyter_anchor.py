"""The Jupyter anchor of issue 7, measured in the run that compares labd to it (scripts/bench_start.py).

A fresh IPython kernel (``jupyter_client.KernelManager``, the way a notebook server starts one) from the start
call to the first ``stream`` message of ``print(...)`` at the client, executed as soon as the kernel answers
``kernel_info`` (as a notebook front-end waits for it); and an idle kernel's PSS and USS, next to an idle labd
runner's.
Needs ``pip install labd[bench]`` (jupyter_client, ipykernel); :func:`available` says whether it can run.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

__all__ = ["available", "kernel_first_output", "kernel_idle_memory"]


def available() -> bool:
    """True if jupyter_client and ipykernel are importable (the ``bench`` extra)."""
    try:
        import ipykernel  # noqa: F401
        import jupyter_client  # noqa: F401
    except ImportError:
        return False
    return True


def _first_output(timeout: float = 60.0) -> tuple[float, Any]:
    """Seconds from start_kernel() to the first stdout at the client; and the still-running manager."""
    from jupyter_client import KernelManager

    t0 = time.perf_counter()
    km = KernelManager(kernel_name="python3")
    km.start_kernel(stderr=subprocess.DEVNULL)  # its banner warnings would garble the benchmark's table
    kc = km.client()
    kc.start_channels()
    # what a notebook front-end does first: kernel_info until it answers (and the iopub socket is joined,
    # else the output can be published before anyone listens)
    kc.wait_for_ready(timeout=timeout)
    kc.execute("print('first output')")
    deadline = t0 + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.perf_counter()))
        if msg["msg_type"] == "stream":
            elapsed = time.perf_counter() - t0
            kc.stop_channels()
            return elapsed, km


def kernel_first_output(n: int) -> list[float]:
    """``n`` fresh kernels, one after the other: start -> first output at the client, in ms."""
    out = []
    for _ in range(n):
        elapsed, km = _first_output()
        km.shutdown_kernel(now=True)
        out.append(elapsed * 1000)
    return out


def kernel_idle_memory(settle: float = 2.0) -> tuple[float, float]:
    """(PSS, USS) in MiB of a kernel that has printed once and then sat idle for ``settle`` seconds."""
    import psutil

    _, km = _first_output()
    try:
        time.sleep(settle)  # a benchmark, not a test: let it reach its idle state
        pid = km.provisioner.pid if km.provisioner is not None else None
        assert pid is not None  # noqa: S101 - a local kernel always has a pid
        mem = psutil.Process(pid).memory_full_info()
        return mem.pss / 2**20, mem.uss / 2**20
    finally:
        km.shutdown_kernel(now=True)


if __name__ == "__main__":  # a quick look on its own: python scripts/jupyter_anchor.py
    if not available():
        raise SystemExit("needs jupyter_client and ipykernel: pip install 'labd[bench]'")
    runs = kernel_first_output(5)
    print("kernel start -> first output, ms:", ", ".join(f"{x:.0f}" for x in runs))
    pss, uss = kernel_idle_memory()
    print(f"idle kernel PSS {pss:.1f} MiB, USS {uss:.1f} MiB")
