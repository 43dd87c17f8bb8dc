"""Control requests: one small command object per request type (validate, then execute)."""

from labd.daemon.api import agents, lineage, queries, remote, retention, search, sessions, skills  # noqa: F401 - importing registers the request types
from labd.daemon.api.base import ApiError, Request, registry

__all__ = ["ApiError", "Request", "registry"]
