"""An OpenAI-compatible chat-completions server on loopback that answers by the offline model's rules.

So built-in workflows (planner, engineer with ``run_code``, researcher, writer) run against a real HTTP
model endpoint with deterministic answers, and a test can count how many requests reached "the model".
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from labd.runner.agents.offline import _answer, _engineer_code

__all__ = ["ScriptedServer", "scripted_server", "config_for"]


class ScriptedServer(ThreadingHTTPServer):
    """Counts requests in ``requests`` (the JSON bodies, in arrival order)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()


def _content(message: dict[str, Any]) -> str:
    c = message.get("content")
    if isinstance(c, list):
        return "\n".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return str(c or "")


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """The assistant message (and finish reason) the offline model would give for this request."""
    messages = body.get("messages") or []
    system = "\n".join(_content(m) for m in messages if m.get("role") == "system")
    role_match = re.search(r"ROLE:\s*([a-z_]+)", system)
    role = role_match.group(1) if role_match else "assistant"
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    request = _content(messages[last_user]) if last_user >= 0 else ""
    tool_output = "\n".join(_content(m) for m in messages[last_user + 1:] if m.get("role") == "tool")
    tools = [t["function"]["name"] for t in body.get("tools") or []]
    if role == "engineer" and not tool_output and "run_code" in tools:
        args = json.dumps({"code": _engineer_code(request), "language": "python"})
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_" + hashlib.sha256(request.encode()).hexdigest()[:8], "type": "function",
             "function": {"name": "run_code", "arguments": args}}]}
    return {"role": "assistant", "content": _answer(role, request, tool_output)}


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(body)
            n = len(self.server.requests)
        message = answer(body)
        reply = {"id": f"cmpl-{n}", "object": "chat.completion", "created": 0, "model": "scripted",
                 "choices": [{"index": 0, "message": message,
                              "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
                 "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def config_for(server: ScriptedServer, price_in: float = 1.0, price_out: float = 2.0) -> str:
    """config.toml text making the server the default model, priced so that live calls cost something."""
    port = server.server_address[1]
    return ("[models.default]\n"
            f'provider = "openai"\nmodel = "scripted"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
            f'[prices."scripted"]\ninput = {price_in}\noutput = {price_out}\n')
