"""The dashboard's web server: JSON endpoints over :class:`labd.ipc.Client`, a live event stream, static files.

Security: bound to 127.0.0.1 only; a random token printed in the URL's fragment at start (``/#token=...``: a
fragment is never sent to a server, so it reaches no log). The page keeps it in the origin's ``localStorage`` and
sends it as ``Authorization: Bearer <token>`` on every request, compared with :func:`hmac.compare_digest` — else
403. No cookie: browsers send a cookie for 127.0.0.1 to *every* port of it, so any other local user's server on
another port would receive it (a link was enough), whereas ``localStorage`` belongs to this origin (scheme, host
and port) alone. The Host header must name the loopback address we serve (DNS rebinding), and a state-changing
request must come from our own Origin. No page may frame ours (:data:`SECURITY_HEADERS`); a request body is read
at most :data:`MAX_BODY` bytes. ``--open`` hands the browser a 0600 file that redirects, not the URL, so the token
never sits on a command line other users can read (:mod:`labd.frontends.ui.serve`, which runs this app). Raw
signed IPC frames never reach the browser: the server speaks to the daemon, the page to it.

Live updates: ``/api/sessions/{id}/stream?since=N`` is a Server-Sent Events stream of the session's events, each
once and in seq order (resumable: the browser's ``Last-Event-ID`` is the last seq it saw). It follows the
daemon's live tail and fills from the store what the tail dropped (:mod:`labd.frontends.ui.live`), so a page never
misses an event, and an open page on an idle session costs no request. A stream ends when the session does
(``event: end``) or when the server stops (no ``end``: the page resumes from its last seq once a dashboard serves
again). While the daemon cannot be read it sends ``event: error`` every two seconds, then ``event: resumed`` once
it answers again (a restarted daemon included: the stream goes on from its last seq).

Stopping: each request to the daemon runs in a daemon thread of its own, on a client lent by a small pool
(:class:`labd.frontends.ui.calls.ClientPool`), and a request still waiting for a stuck daemon when the server
stops answers 503 at once (its thread, left to its client's timeout, keeps neither the loop nor the process):
`labd ui` exits promptly, with no traceback, whatever the daemon does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import zmq.asyncio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labd.frontends.ui.accept_errors import quiet_accept_errors
from labd.frontends.ui.calls import DAEMON_THREADS, ClientPool, Stopping, http_status, in_thread
from labd.frontends.ui.downloads import file_response
from labd.frontends.ui.endshort import EndShort
from labd.frontends.ui.fields import RESOLVE_FIELDS, START_FIELDS, count, field, filters, only, optional
from labd.frontends.ui.live import DaemonWatch, follow_session
from labd.frontends.ui.tickets import Ticket, Tickets
from labd.ipc.client import Client, LabdError
from labd.ipc.events import TERMINAL_STATUSES
from labd.ipc.units import shortened

__all__ = ["build_app"]

STATIC = Path(__file__).parent / "static"
T = TypeVar("T")
#: A request body (start, resolve) larger than this is refused with 413 once that many bytes arrived, or at once
#: when its Content-Length says so: it is never read whole into memory.
MAX_BODY = 1_000_000
#: A request body must be complete within this many seconds of its headers, or the request is answered 408
#: ``body_timeout`` and the connection closed: a client (holding the token) that sends part of a body and waits
#: held the connection, its descriptor and a request task for good. ``LABD_UI_BODY_S`` shortens it for tests.
BODY_S = shortened(30.0, "LABD_UI_BODY_S", floor=0.5)
#: Sent with every response. ``frame-ancestors 'none'`` / ``X-Frame-Options``: no other page may frame the
#: dashboard. Any server on 127.0.0.1 (another local user's, on another port) is *same-site* with it, so a framed
#: dashboard there got this origin's unpartitioned localStorage, i.e. the token: a logged-in page under a page of
#: theirs, whose buttons (approve, stop) a click could be tricked into pressing. No ``script-src``: the page has no
#: inline script, but Playwright's ``wait_for_function`` evaluates strings, which it would refuse (the tests).
SECURITY_HEADERS = [
    (b"content-security-policy", b"frame-ancestors 'none'; object-src 'none'; base-uri 'none'; form-action 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class BodyTooLarge(Exception):
    """A request body over :data:`MAX_BODY` (413)."""


class BodyLate(Exception):
    """A request body not complete within :data:`BODY_S` (408)."""


class _SecurityHeaders:
    """Pure ASGI middleware adding :data:`SECURITY_HEADERS` to every response (API, stream, download, static, the
    errors). Not Starlette's ``BaseHTTPMiddleware``, which would buffer the live streams' chunks through a task."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def build_app(home: str | None, token: str, port_ref: list[int],
              stopping: Callable[[], bool] = lambda: False) -> Starlette:
    """The ASGI app for the daemon of ``home``; ``port_ref[0]`` is the port we serve (known after binding).
    Live streams end once ``stopping()`` is true: the server waits for open responses before it exits."""

    slots = asyncio.Semaphore(DAEMON_THREADS)
    pool = ClientPool(home)  # a request costs a round trip on a client kept for reuse, not a new connection
    watch = DaemonWatch(home, stopping)  # for the live streams: the stop, and the daemon gone or restarted
    zctx = zmq.asyncio.Context()  # the live streams' SUB sockets, on the loop
    tickets = Tickets()  # one-time download links

    async def daemon(fn: Callable[[Client], T]) -> T:
        async with slots:
            if stopping():  # queued for a slot until the stop: no new request to the daemon
                raise Stopping()
            return await in_thread(lambda: pool.call(fn), stopping)

    def error(exc: LabdError, details: bool = False) -> Response:
        err: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if details:
            err["details"] = exc.details
        return JSONResponse({"error": err}, status_code=http_status(exc.code))

    def refusal(request: Request) -> Response | None:
        """The 403 for a request that may not be served (which check failed, in its message: all three said
        "wrong token", and a user behind an SSH tunnel on another port looked for a token problem), or None."""
        if not allowed_host(request):
            return forbidden(wrong_host(request))
        given = request.headers.get("authorization", "").removeprefix("Bearer ")
        if not (given and hmac.compare_digest(given.encode(), token.encode())):
            return forbidden("missing or wrong token: open the URL `labd ui` printed")
        origin = request.headers.get("origin")
        if request.method != "GET" and origin is not None and \
                origin not in (f"http://127.0.0.1:{port_ref[0]}", f"http://localhost:{port_ref[0]}"):
            return forbidden(f"a request that changes something must come from the dashboard's own page, not from "
                             f"{origin[:200]!r}")
        return None

    def wrong_host(request: Request) -> str:
        host = request.headers.get("host", "")[:200]
        return (f"this dashboard answers at 127.0.0.1:{port_ref[0]} (or localhost) only, not {host!r} (a guard "
                f"against DNS rebinding): open the URL `labd ui` printed; through an SSH tunnel, forward the same "
                f"port (ssh -L {port_ref[0]}:127.0.0.1:{port_ref[0]} ...)")

    def forbidden(message: str) -> Response:
        return JSONResponse({"error": {"code": "forbidden", "message": message}}, status_code=403)

    def api(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            refused = refusal(request)
            if refused is not None:
                return refused
            try:
                return JSONResponse(await fn(request))
            except LabdError as exc:
                return error(exc, details=True)
            except (ValueError, KeyError) as exc:
                return JSONResponse({"error": {"code": "bad_request", "message": str(exc)}}, status_code=400)
            except BodyTooLarge:
                return JSONResponse({"error": {"code": "too_large", "message": f"the request body is over "
                                               f"{MAX_BODY:,} bytes"}}, status_code=413)
            except BodyLate:  # answered, then closed: the rest of the body, if it ever comes, is not read
                return JSONResponse({"error": {"code": "body_timeout", "message": f"the request body did not "
                                               f"arrive within {BODY_S:g} s"}}, status_code=408,
                                    headers={"Connection": "close"})
            except ClientDisconnect:  # gone mid-body: nobody reads the answer (it was a traceback in the log)
                return Response(status_code=400)
            except asyncio.CancelledError:  # cut off by the stop's grace period (e.g. a body still arriving)
                return error(Stopping())
        return endpoint

    async def body(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:  # said up front: refused before any of it is read
            raise BodyTooLarge()
        raw = bytearray()
        try:
            async with asyncio.timeout(BODY_S):
                async for part in request.stream():  # chunked, or a Content-Length that lies: counted as it arrives
                    raw += part
                    if len(raw) > MAX_BODY:
                        raise BodyTooLarge()
        except TimeoutError:
            raise BodyLate() from None
        try:
            data = json.loads(raw or b"{}")
        except RecursionError:  # nested past the parser's stack: a client error, not a 500
            raise ValueError("the body is nested too deeply") from None
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data

    async def index(request: Request) -> Response:
        """The page's shell (static: it holds no data; every API call needs the token). A ``?token=`` URL (as
        labd printed before the fragment form) moves the token into the fragment, out of logs and history."""
        if not allowed_host(request):
            return forbidden(wrong_host(request))
        given = request.query_params.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), token.encode()):
                return forbidden("wrong token: open the URL `labd ui` printed")
            return RedirectResponse(f"/#token={token}", status_code=303, headers={"Cache-Control": "no-store"})
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def allowed_host(request: Request) -> bool:
        return request.headers.get("host", "") in (f"127.0.0.1:{port_ref[0]}", f"localhost:{port_ref[0]}")

    static = StaticFiles(directory=STATIC)

    async def static_files(scope: Scope, receive: Receive, send: Send) -> None:
        """The page's scripts and styles, behind the Host check as every other path is (they hold no data)."""
        request = Request(scope)
        await (static if allowed_host(request) else forbidden(wrong_host(request)))(scope, receive, send)

    async def status(_: Request) -> Any:
        return await daemon(lambda c: c.status())

    async def workflows(_: Request) -> Any:
        return await daemon(lambda c: c.workflows())

    async def sessions(request: Request) -> Any:
        filters(request, "status", "limit")
        wanted = [s for s in request.query_params.get("status", "").split(",") if s]
        limit = count(request, "limit", 200)
        return await daemon(lambda c: c.sessions(status=wanted or None, limit=max(1, min(limit, 1000))))

    async def start(request: Request) -> Any:
        b = await body(request)
        only(b, START_FIELDS)
        limits = {k: b[k] for k in ("memory", "cpu", "timeout", "budget") if b.get(k) not in (None, "")}
        workflow = field(b, "workflow")
        name = optional(b, "name", str, "a string (or null)")
        params = optional(b, "params", dict, "an object of the workflow's parameters (or null)") or {}
        return await daemon(lambda c: {"session": c.start(workflow, name=name, params=params, **limits)})

    async def session(request: Request) -> Any:
        # `steps`: how many of the newest steps and transitions (the page's header asks for 0: a long session's 2,000
        # of each were a megabyte read again after every batch of lifecycle events, and every 2 s once it ended)
        filters(request, "steps")
        steps = count(request, "steps", -1)
        limit = {} if steps < 0 else {"steps_limit": steps}
        return await daemon(lambda c: c.request("session.get", session=request.path_params["sid"], **limit)["session"])

    async def action(request: Request) -> Any:
        sid, what = request.path_params["sid"], request.path_params["action"]
        calls = {"stop": lambda c: c.stop(sid), "kill": lambda c: c.kill(sid), "pause": lambda c: c.pause(sid),
                 "resume": lambda c: c.resume(sid)}
        if what not in calls:
            raise ValueError(f"unknown action {what!r}")
        return await daemon(calls[what])

    async def dag(request: Request) -> Any:
        filters(request, "newest")
        newest = count(request, "newest", -1)  # the page asks for the newest nodes only: 1-100000, the daemon checks
        return await daemon(lambda c: c.dag(request.path_params["sid"], newest=None if newest < 0 else newest))

    async def cost(request: Request) -> Any:
        # the page draws the sums: every call of a long session (100,000 of them) would be megabytes it never reads
        return await daemon(lambda c: c.cost(request.path_params["sid"], calls=False))

    async def files(request: Request) -> Any:
        return await daemon(lambda c: c.request("session.files", session=request.path_params["sid"]))

    async def events(request: Request) -> Any:
        filters(request, "since", "node")
        since = count(request, "since", 0)
        node = request.query_params.get("node")
        # filtered by the daemon (the node and the nodes nested in it), so a page is a page of the node's events
        return await daemon(lambda c: c.events(request.path_params["sid"], since=since, node=node or None))

    async def approvals(request: Request) -> Any:
        filters(request, "status", "session", "full")
        which = request.query_params.get("status", "pending")
        # one session's, whole (`full=1`: prompts and contexts uncut, which a list across sessions leaves out when
        # long: the page reads them for the approvals it shows cut)
        one: dict[str, Any] = {}
        if request.query_params.get("session"):
            one["session"] = request.query_params["session"]
        if request.query_params.get("full") not in (None, "", "0"):
            one["full"] = True

        def listed(c: Client) -> list[dict[str, Any]]:  # the oldest 20 of each session; `more_pending`: the rest
            reply = c.request("approvals.list", status=which, **one)
            more = reply.get("omitted") or {}
            return [{**a, "more_pending": more[a["session_id"]]} if more.get(a["session_id"]) else a
                    for a in reply["approvals"]]
        return await daemon(listed)

    async def resolve(request: Request) -> Any:
        b = await body(request)
        only(b, RESOLVE_FIELDS)
        sid, decision = field(b, "session"), field(b, "decision")
        feedback, hypothesis, approval_id = (optional(b, k, str, "a string (or null)")
                                             for k in ("feedback", "hypothesis", "approval_id"))
        return await daemon(lambda c: c.resolve(sid, decision, feedback=feedback, hypothesis=hypothesis,
                                                approval_id=approval_id, by="ui"))

    async def download(request: Request) -> Response:
        refused = refusal(request)
        if refused is not None:
            return refused
        try:
            filters(request, "b64")  # b64: a name that is not UTF-8, its bytes (the listing's path_b64)
        except ValueError as exc:
            return JSONResponse({"error": {"code": "bad_request", "message": str(exc)}}, status_code=400)
        return await send_file(request.path_params["sid"], request.path_params["path"], request.query_params.get("b64"))

    async def ticket(request: Request) -> Any:
        """A one-time link to a file (docs: frontends/ui/tickets.py): ``{url}``."""
        b = await body(request)
        sid, path, b64 = b.get("session"), b.get("path"), b.get("b64")
        if not (isinstance(sid, str) and isinstance(path, str) and (b64 is None or isinstance(b64, str))):
            raise ValueError("a ticket names {session, path, b64?}: texts")
        return {"url": f"/api/download/{tickets.issue(Ticket(sid[:200], path[:8192], b64 and b64[:16384]))}"}

    async def ticketed(request: Request) -> Response:
        """The file a ticket names (the ticket is the credential: a browser's own download sends no header)."""
        if not allowed_host(request):
            return forbidden(wrong_host(request))
        if request.method != "GET":  # a HEAD (a link checker, a prefetch) must not use the ticket up
            return JSONResponse({"error": {"code": "bad_request", "message": "a download ticket is for GET"}},
                                status_code=405, headers={"Allow": "GET"})
        held = tickets.take(request.path_params["ticket"])
        if held is None:
            return JSONResponse({"error": {"code": "not_found", "message": "no such download ticket (each is used "
                                           "once, within a minute): download the file again from its page"}},
                                status_code=404)
        return await send_file(held.session, held.path, held.b64)

    async def send_file(sid: str, rel: str, b64: str | None) -> Response:
        try:
            reply = await daemon(lambda c: c.request("session.files", session=sid))
        except LabdError as exc:
            return error(exc)
        return await file_response(reply, sid, rel, b64)

    async def stream(request: Request) -> Response:
        refused = refusal(request)
        if refused is not None:
            return refused
        sid = request.path_params["sid"]
        raw_since = request.headers.get("last-event-id") or request.query_params.get("since", "0")
        if not raw_since.isdigit() or len(raw_since) > 18:
            return JSONResponse({"error": {"code": "bad_request", "message": "since / Last-Event-ID must be a "
                                           "sequence number (0 or more)"}}, status_code=400)
        since = int(raw_since)
        try:  # an unknown session is a 404 now, not a stream of errors that never ends
            row = await daemon(lambda c: c.session(sid))
        except LabdError as exc:  # anything else may pass (the page retries a 503)
            return JSONResponse({"error": {"code": exc.code, "message": exc.message}},
                                status_code=404 if exc.code == "not_found" else 503)
        # The session's id from here on, not the text given: the live tail is subscribed by prefix (ZeroMQ topics),
        # so an id prefix also took in the events of every session whose id starts so (the cursor then skipped the
        # session's own), and a name subscribed to nothing (the stream only polled the store)
        sid = str(row["id"])
        if since > int(row.get("last_seq") or 0):  # a seq it never had: the stream would wait for it in silence
            return JSONResponse({"error": {"code": "bad_request", "message": f"since {since} is past the session's "
                                           f"last event (seq {row.get('last_seq') or 0})"}}, status_code=400)

        async def page(after: int) -> dict[str, Any]:
            return await daemon(lambda c: c.events(sid, since=after, limit=2000))

        gen = follow_session(sid, since, watch=watch, zctx=zctx, read=page, disconnected=request.is_disconnected,
                             ended=row.get("status") in TERMINAL_STATUSES)
        return StreamingResponse(gen, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    routes = [
        Route("/", index),
        Route("/api/status", api(status)),
        Route("/api/workflows", api(workflows)),
        Route("/api/sessions", api(sessions)),
        Route("/api/sessions", api(start), methods=["POST"]),
        Route("/api/sessions/{sid}", api(session)),
        Route("/api/sessions/{sid}/dag", api(dag)),
        Route("/api/sessions/{sid}/cost", api(cost)),
        Route("/api/sessions/{sid}/files", api(files)),
        Route("/api/sessions/{sid}/files/{path:path}", download),
        Route("/api/tickets", api(ticket), methods=["POST"]),
        Route("/api/download/{ticket}", ticketed),
        Route("/api/sessions/{sid}/events", api(events)),
        Route("/api/sessions/{sid}/stream", stream),
        Route("/api/sessions/{sid}/{action}", api(action), methods=["POST"]),
        Route("/api/approvals", api(approvals)),
        Route("/api/approvals/resolve", api(resolve), methods=["POST"]),
        Mount("/static", app=static_files, name="static"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        quiet_accept_errors(asyncio.get_running_loop())  # out of descriptors: a line a minute, not 80,000 tracebacks
        yield
        pool.close()  # after the open responses have ended (or been cancelled)
        zctx.destroy(linger=0)

    async def http_error(_: Request, exc: Exception) -> Response:
        """An unknown path (404) or method (405): the API's JSON error shape, not Starlette's plain text."""
        code = getattr(exc, "status_code", 500)
        names = {404: ("not_found", "no such page or API path"), 405: ("method_not_allowed", "method not allowed")}
        name, message = names.get(code, ("http_error", str(getattr(exc, "detail", "")) or "error"))
        return JSONResponse({"error": {"code": name, "message": message}}, status_code=code,
                            headers=getattr(exc, "headers", None))

    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(EndShort), Middleware(_SecurityHeaders)],
                     exception_handlers={HTTPException: http_error})
