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

from labd.ipc.client import Client, LabdError  # noqa: E402 - after __version__, which the client may read

__all__ = ["Client", "LabdError", "__version__"]
