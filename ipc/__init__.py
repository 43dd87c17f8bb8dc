"""The wire between labd's processes: envelopes, signing, endpoints, event schemas and the client SDK."""

from ipc.client import Client, LabdError

__all__ = ["Client", "LabdError"]
