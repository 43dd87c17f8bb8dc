"""labd: run agent research sessions, each in its own process, and keep a complete record of them.

The import names live under this package: ``labd.daemon`` (the server), ``labd.runner`` (the per-session
process), ``labd.ipc`` (the wire and the client SDK) and ``labd.store`` (the durable record). The public
SDK is re-exported here::

    from labd import Client
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("labd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from typing import TYPE_CHECKING, Any  # noqa: E402

if TYPE_CHECKING:
    from labd.ipc.client import Client, LabdError
    from labd.ipc.executor import Executor
    from labd.ipc.functions import RemoteError
    from labd.runner.context import Context

#: the SDK's names, imported when first used (``from labd import Client``), not with the package: the ``labd``
#: command imports this package first, and a Ctrl-C during the SDK's import (a few hundred ms) was a traceback
_LAZY = {"Client": "labd.ipc.client", "LabdError": "labd.ipc.client", "Executor": "labd.ipc.executor",
         "RemoteError": "labd.ipc.functions"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'labd' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups find it here
    return value


def context() -> "Context":
    """Inside a session: its context (steps, agents, approvals, workdir), e.g. from a function sent with
    ``Client.submit``; raises RuntimeError elsewhere."""
    from labd.runner.context import current  # not at import time: clients never need the runner

    return current()


__all__ = ["Client", "Executor", "LabdError", "RemoteError", "context", "__version__"]
