"""Context variables that attribute agent activity: which agent and which tool call is running."""

from __future__ import annotations

import contextvars

__all__ = ["current_agent", "current_call", "current_model"]

current_agent: contextvars.ContextVar[str | None] = contextvars.ContextVar("labd_agent", default=None)
current_call: contextvars.ContextVar[str | None] = contextvars.ContextVar("labd_tool_call", default=None)
current_model: contextvars.ContextVar[str | None] = contextvars.ContextVar("labd_model", default=None)
