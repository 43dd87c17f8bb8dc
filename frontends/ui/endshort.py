"""A download whose file shrank while it was sent: ended short, said once.

The response's Content-Length was sent with the file's size when it was opened; a file the session truncates
meanwhile cannot fill it. The download raises :class:`FileShrank`, and :class:`EndShort` (pure ASGI middleware,
outermost) ends the request there: uvicorn closes the connection with the response incomplete, so the client sees
the transfer unfinished, never a shorter file passed off as whole. The user reads one warning naming the file:
no "Exception in ASGI application" traceback, and not uvicorn's own "ASGI callable returned without completing
response." line after it either (that one is dropped only for the request that ended short, which the task's
context marks: uvicorn logs it in the same task, right after the app returns).
"""

from __future__ import annotations

import contextvars
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["FileShrank", "EndShort"]

#: uvicorn's line for a request whose app returned before the response was complete
INCOMPLETE = "ASGI callable returned without completing response"

#: set in the request's task when its download ended short (the warning is logged; uvicorn's follow-up is not)
_ended_short: contextvars.ContextVar[bool] = contextvars.ContextVar("labd_ui_ended_short", default=False)


class FileShrank(Exception):
    """A download's file is shorter than the Content-Length sent (it shrank while it was sent): the response cannot
    be completed; :class:`EndShort` closes the connection instead, so the client sees the transfer incomplete."""


class _OneLine(logging.Filter):
    """Drops uvicorn's "returned without completing response" for a request that ended short (already said)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_ended_short.get() and record.getMessage().startswith(INCOMPLETE))


_ONE_LINE = _OneLine()


class EndShort:
    """Pure ASGI middleware: a download that raised :class:`FileShrank` ends there, with one warning line (uvicorn
    then closes the connection, its response incomplete) instead of an "Exception in ASGI application" traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        logging.getLogger("uvicorn.error").addFilter(_ONE_LINE)  # once: a logger keeps one of each filter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except* FileShrank as group:
            for exc in group.exceptions:
                logging.getLogger("uvicorn.error").warning("%s", exc)
            _ended_short.set(True)  # this task's context: uvicorn's follow-up line is filtered (above)
