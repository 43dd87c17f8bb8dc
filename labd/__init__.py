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

from typing import TYPE_CHECKING  # noqa: E402

from labd.ipc.client import Client, LabdError  # noqa: E402 - after __version__, which the client may read
from labd.ipc.executor import Executor  # noqa: E402
from labd.ipc.functions import RemoteError  # noqa: E402

if TYPE_CHECKING:
    from labd.runner.context import Context


def context() -> "Context":
    """Inside a session: its context (steps, agents, approvals, workdir), e.g. from a function sent with
    ``Client.submit``; raises RuntimeError elsewhere."""
    from labd.runner.context import current  # not at import time: clients never need the runner

    return current()


__all__ = ["Client", "Executor", "LabdError", "RemoteError", "context", "__version__"]
