"""The dashboard's HTTP protocol: uvicorn's h11 one, with a deadline for a request's headers.

uvicorn times out a keep-alive connection that sends nothing, but not one that sends part of a request's headers and
then waits: each such connection holds a file descriptor for good. Another local user (no token is needed to connect)
opened ~18,000 of them against the dashboard's limit of 20,000 (an attack review); past the limit it accepts no one.
Here a request's headers must be complete within :data:`HEADERS_S` of the connection, or of the previous response on
it; otherwise the connection is closed. Bodies are bounded by the app as they arrive; a response sent before the
request's body was read (a refusal) closes the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from labd.ipc.units import shortened

__all__ = ["HeaderDeadline", "HEADERS_S"]

#: seconds a client has to send a request's headers (a browser sends them in one packet)
HEADERS_S = 10.0


class HeaderDeadline(H11Protocol):
    """:class:`H11Protocol` that closes a connection whose request headers are late (see the module docstring)."""

    #: ``LABD_UI_HEADERS_S`` shortens it for tests (read once, at import)
    headers_s = shortened(HEADERS_S, "LABD_UI_HEADERS_S", floor=0.5)
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a request's headers are in (or the connection is over)
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.SEND_BODY:
            # answered before its body was read (a refusal: no token, too large): nothing more is wanted from it.
            # uvicorn read on and discarded the rest, so a client sending a chunk every few seconds held the
            # connection (and a descriptor) for good without a token: 3,000 of them starved the dashboard
            self.transport.close()
        elif self.conn.their_state is h11.IDLE:
            self._arm()  # the next request on this connection, if any, has the same time for its headers

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.headers_s, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
