"""The dashboard's web server: JSON endpoints over :class:`labd.ipc.Client`, a live event stream, static files.

Security, as jupyter_server does it for notebooks: bound to 127.0.0.1 only; a random token printed in the URL
at start; the first request that carries it (``?token=``) gets an HttpOnly, SameSite=Strict cookie and is
redirected to a URL without the token (so it does not stay in history or logs); every other request needs the
cookie or ``Authorization: Bearer <token>``, compared with :func:`hmac.compare_digest` — else 403. The Host
header must name the loopback address we serve (DNS rebinding), and a state-changing request must come from our
own Origin. Raw signed IPC frames never reach the browser: the server speaks to the daemon, the page to it.

Live updates: ``/api/sessions/{id}/stream?since=N`` is a Server-Sent Events stream of the session's events read
from the store by seq (resumable: the browser's ``Last-Event-ID`` is the last seq it saw), so a page never
misses an event whatever the live tail dropped.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import secrets
import socket
import sys
import webbrowser
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from labd.ipc.client import Client, LabdError, still_ended

__all__ = ["build_app", "run"]

STATIC = Path(__file__).parent / "static"
COOKIE = "labd_ui"
T = TypeVar("T")
STREAM_POLL_S = 0.3
MAX_DOWNLOAD = 64 * 1024 * 1024


def build_app(home: str | None, token: str, port_ref: list[int]) -> Starlette:
    """The ASGI app for the daemon of ``home``; ``port_ref[0]`` is the port we serve (known after binding)."""

    async def daemon(fn: Callable[[Client], T]) -> T:
        def run_sync() -> T:
            with Client(home) as c:
                return fn(c)
        return await anyio.to_thread.run_sync(run_sync)

    def allowed(request: Request) -> bool:
        host = request.headers.get("host", "")
        if host not in (f"127.0.0.1:{port_ref[0]}", f"localhost:{port_ref[0]}"):
            return False
        given = request.cookies.get(COOKIE) or request.headers.get("authorization", "").removeprefix("Bearer ")
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        return origin is None or origin in (f"http://127.0.0.1:{port_ref[0]}", f"http://localhost:{port_ref[0]}")

    def forbidden() -> Response:
        return JSONResponse({"error": {"code": "forbidden", "message": "missing or wrong token: open the URL "
                                                                       "`labd ui` printed"}}, status_code=403)

    def api(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            if not allowed(request):
                return forbidden()
            if request.method != "GET" and not same_origin(request):
                return forbidden()
            try:
                return JSONResponse(await fn(request))
            except LabdError as exc:
                status = 404 if exc.code == "not_found" else 503 if exc.code in ("no_daemon", "timeout") else 400
                return JSONResponse({"error": {"code": exc.code, "message": exc.message, "details": exc.details}},
                                    status_code=status)
            except (ValueError, KeyError) as exc:
                return JSONResponse({"error": {"code": "bad_request", "message": str(exc)}}, status_code=400)
        return endpoint

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > 1_000_000:
            raise ValueError("request body too large")
        data = json.loads(raw or b"{}")
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data

    async def index(request: Request) -> Response:
        given = request.query_params.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), token.encode()) or not allowed_host(request):
                return forbidden()
            resp = RedirectResponse("/", status_code=303)
            resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            return resp
        if not allowed(request):
            return forbidden()
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def allowed_host(request: Request) -> bool:
        return request.headers.get("host", "") in (f"127.0.0.1:{port_ref[0]}", f"localhost:{port_ref[0]}")

    async def status(_: Request) -> Any:
        return await daemon(lambda c: c.status())

    async def workflows(_: Request) -> Any:
        return await daemon(lambda c: c.workflows())

    async def sessions(request: Request) -> Any:
        wanted = [s for s in request.query_params.get("status", "").split(",") if s]
        limit = int(request.query_params.get("limit", "200"))
        return await daemon(lambda c: c.sessions(status=wanted or None, limit=max(1, min(limit, 1000))))

    async def start(request: Request) -> Any:
        b = await body(request)
        limits = {k: b[k] for k in ("memory", "cpu", "timeout", "budget") if b.get(k) not in (None, "")}
        return await daemon(lambda c: {"session": c.start(str(b["workflow"]), name=b.get("name") or None,
                                                          params=b.get("params") or {}, **limits)})

    async def session(request: Request) -> Any:
        return await daemon(lambda c: c.session(request.path_params["sid"]))

    async def action(request: Request) -> Any:
        sid, what = request.path_params["sid"], request.path_params["action"]
        calls = {"stop": lambda c: c.stop(sid), "kill": lambda c: c.kill(sid), "pause": lambda c: c.pause(sid),
                 "resume": lambda c: c.resume(sid)}
        if what not in calls:
            raise ValueError(f"unknown action {what!r}")
        return await daemon(calls[what])

    async def dag(request: Request) -> Any:
        return await daemon(lambda c: c.dag(request.path_params["sid"]))

    async def cost(request: Request) -> Any:
        return await daemon(lambda c: c.cost(request.path_params["sid"]))

    async def files(request: Request) -> Any:
        return await daemon(lambda c: c.request("session.files", session=request.path_params["sid"]))

    async def events(request: Request) -> Any:
        since = int(request.query_params.get("since", "0"))
        node = request.query_params.get("node")
        page = await daemon(lambda c: c.events(request.path_params["sid"], since=since))
        if node:
            page["events"] = [e for e in page["events"] if e.get("node_id") == node]
        return page

    async def approvals(request: Request) -> Any:
        which = request.query_params.get("status", "pending")
        return await daemon(lambda c: c.approvals(status=which))

    async def resolve(request: Request) -> Any:
        b = await body(request)
        return await daemon(lambda c: c.resolve(str(b["session"]), str(b["decision"]),
                                                feedback=b.get("feedback") or None,
                                                hypothesis=b.get("hypothesis") or None,
                                                approval_id=b.get("approval_id") or None, by="ui"))

    async def download(request: Request) -> Response:
        if not allowed(request):
            return forbidden()
        sid, rel = request.path_params["sid"], request.path_params["path"]
        try:
            reply = await daemon(lambda c: c.request("session.files", session=sid))
        except LabdError as exc:
            return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=404)
        if rel not in {f["path"] for f in reply["files"]}:
            return JSONResponse({"error": {"code": "not_found", "message": f"no file {rel!r}"}}, status_code=404)
        workdir = Path(reply["workdir"]).resolve()
        target = (workdir / rel).resolve()
        if not target.is_relative_to(workdir) or not target.is_file() or target.stat().st_size > MAX_DOWNLOAD:
            return JSONResponse({"error": {"code": "not_found", "message": "file gone or too large"}},
                                status_code=404)
        return FileResponse(target, filename=target.name)

    async def stream(request: Request) -> Response:
        if not allowed(request):
            return forbidden()
        sid = request.path_params["sid"]
        since = int(request.headers.get("last-event-id") or request.query_params.get("since", "0"))

        async def gen() -> AsyncIterator[str]:
            last, ended = since, False
            yield "retry: 1000\n\n"
            while not ended:
                if await request.is_disconnected():
                    return
                try:
                    page = await daemon(functools.partial(_page, sid, last))
                except LabdError as exc:
                    yield f"event: error\ndata: {json.dumps({'code': exc.code, 'message': exc.message})}\n\n"
                    await asyncio.sleep(2)
                    continue
                for ev in page["events"]:
                    last = ev["seq"]
                    ended = still_ended(ended, ev["kind"])  # a resumed session's old end does not count
                    yield f"id: {last}\ndata: {json.dumps(ev, default=str)}\n\n"
                if not page["more"] and not ended:
                    await asyncio.sleep(STREAM_POLL_S)
            yield "event: end\ndata: {}\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream",
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
        Route("/api/sessions/{sid}/events", api(events)),
        Route("/api/sessions/{sid}/stream", stream),
        Route("/api/sessions/{sid}/{action}", api(action), methods=["POST"]),
        Route("/api/approvals", api(approvals)),
        Route("/api/approvals/resolve", api(resolve), methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes)


def _page(sid: str, since: int, c: Client) -> dict[str, Any]:
    return c.events(sid, since=since, limit=2000)


def run(home: str | None, port: int = 0, open_browser: bool = False, token: str | None = None) -> int:
    """Serve the dashboard on 127.0.0.1 until Ctrl-C; prints the URL (with its token) first."""
    import uvicorn

    token = token or secrets.token_urlsafe(24)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        print(f"labd: cannot listen on 127.0.0.1:{port}: {exc.strerror}", file=sys.stderr)
        return 2
    sock.listen(128)  # before the URL is printed: a client that connects at once waits in the backlog
    port_ref = [sock.getsockname()[1]]
    url = f"http://127.0.0.1:{port_ref[0]}/?token={token}"
    print(f"labd ui: {url}", flush=True)
    print("  (Ctrl-C stops the dashboard; sessions keep running)", flush=True)
    if open_browser:
        webbrowser.open(url)
    # access_log off: request lines would carry the token of the first visit
    config = uvicorn.Config(build_app(home, token, port_ref), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
