"""Control requests: one small command object per request type (validate, then execute)."""

from labd.daemon.api import (  # noqa: F401 - importing registers the request types
    agents,
    durable,
    lineage,
    policy,
    queries,
    remote,
    retention,
    search,
    sessions,
    skills,
    start,
)
from labd.daemon.api.base import ApiError, Request, registry

__all__ = ["ApiError", "Request", "registry"]
