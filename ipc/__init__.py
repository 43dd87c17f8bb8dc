"""The wire between labd's processes: envelopes, signing, endpoints, event schemas and the client SDK."""

from labd.ipc.client import Client, LabdError

__all__ = ["Client", "LabdError"]
