"""`labd ui`'s short-download filter drops uvicorn's follow-up line only for the request that ended short."""

from __future__ import annotations

import asyncio
import logging

from labd.frontends.ui.endshort import INCOMPLETE, EndShort, FileShrank


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, message, None, None)


def test_only_the_task_whose_download_ended_short_loses_uvicorns_incomplete_line() -> None:
    """Another request's "returned without completing response" (a real fault of the app) is still logged: the mark
    is the ended-short request's own task context, and other lines of that task are kept too."""
    async def shrinking(scope: object, receive: object, send: object) -> None:
        raise FileShrank("download of 'x' ended short")

    async def fine(scope: object, receive: object, send: object) -> None:
        return None

    async def request(app: object) -> tuple[bool, bool]:
        await EndShort(app)({}, None, None)  # type: ignore[arg-type]
        log = logging.getLogger("uvicorn.error")
        return (all(f.filter(_record(INCOMPLETE + ".")) for f in log.filters),
                all(f.filter(_record("something else")) for f in log.filters))

    async def both() -> list[tuple[bool, bool]]:
        return list(await asyncio.gather(request(shrinking), request(fine)))

    short, other = asyncio.run(both())
    assert short == (False, True)
    assert other == (True, True)
