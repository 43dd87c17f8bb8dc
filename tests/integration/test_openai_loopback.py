"""The OpenAI-compatible path for real: a chat-completions server on loopback, the real client library."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import DaemonProc, kill_runners

SECRET = "sk-loopback-SECRET-9f3a"
CODE = ("import os, pathlib\n"
        "pathlib.Path('env.txt').write_text(' '.join(sorted(k for k in os.environ if 'KEY' in k)))\n"
        "print('visible keys:', sorted(k for k in os.environ if 'KEY' in k))\n")


class ChatServer(ThreadingHTTPServer):
    """Answers /v1/chat/completions like an OpenAI-compatible server (a local vLLM or llama.cpp would)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        self.server.auth.append(self.headers.get("Authorization", ""))
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        last = body["messages"][-1]
        tools = [t["function"]["name"] for t in body.get("tools", [])]
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if last["role"] == "tool":
            message["content"] = "DONE: " + str(last["content"]).splitlines()[0]
            finish = "stop"
        elif "run_code" in tools:
            message["tool_calls"] = [{"id": f"call_{len(self.server.requests)}", "type": "function",
                                      "function": {"name": "run_code",
                                                   "arguments": json.dumps({"code": CODE, "language": "python"})}}]
            finish = "tool_calls"
        else:
            message["content"] = "hello from loopback"
            finish = "stop"
        reply = {"id": f"cmpl-{len(self.server.requests)}", "object": "chat.completion", "created": 0,
                 "model": "loopback-model", "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                 "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_session_talks_to_an_openai_compatible_server_over_http(isolated_env, chat_server) -> None:
    """A configured OpenAI-compatible model is used over HTTP with the key named in the config; usage and
    model come from the server's answers, are priced with the configured override, and the key never
    reaches the store, the daemon's log, or the environment of executed code."""
    port = chat_server.server_address[1]
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text(
        "[models.default]\n"
        'provider = "openai"\nmodel = "loopback-model"\n'
        f'base_url = "http://127.0.0.1:{port}/v1"\napi_key_env = "LOOPBACK_API_KEY"\n'
        '[prices."loopback-model"]\ninput = 1000.0\noutput = 2000.0\n')
    daemon = DaemonProc(isolated_env, extra_env={"LOOPBACK_API_KEY": SECRET}).start()
    try:
        with daemon.client() as c:
            sid = c.start("one_shot", params={"task": "list the keys you can see"})
            final = c.wait(sid, timeout=60)
            assert final["status"] == "completed", final["reason"]
            events = list(c.history(sid))
            responses = [e["payload"] for e in events if e["kind"] == "llm.response"]
            assert len(responses) == len(chat_server.requests) == 2
            for r in responses:
                assert (r["model"], r["provider"], r["offline"]) == ("loopback-model", "openai", False)
                assert r["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
            assert chat_server.auth == [f"Bearer {SECRET}"] * 2  # the key did reach the provider
            assert chat_server.requests[0]["model"] == "loopback-model"
            assert chat_server.requests[0]["messages"][0]["role"] == "system"
            cost = c.cost(sid)
            assert cost["total"]["cost"] == pytest.approx(2 * (11 * 1000 + 7 * 2000) / 1e6)
            assert not cost["total"]["offline"]
            execution = next(e["payload"] for e in events if e["kind"] == "code.execution")
            assert execution["exit_code"] == 0 and "LOOPBACK_API_KEY" not in execution["output"]
            work = isolated_env / "sessions" / sid / "work"
            assert "LOOPBACK_API_KEY" not in (work / "env.txt").read_text()
    finally:
        daemon.stop()
        kill_runners(isolated_env)
    stored = b"".join(p.read_bytes() for p in isolated_env.glob("labd.db*"))
    assert SECRET.encode() not in stored
    assert SECRET not in daemon.log()


def test_a_missing_key_fails_the_session_with_a_clear_reason(isolated_env, chat_server) -> None:
    """A model whose api_key_env is not set fails the session with a message naming the variable."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text(
        '[models.default]\nprovider = "openai"\nmodel = "m"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'api_key_env = "NOT_SET_ANYWHERE_KEY"\n')
    daemon = DaemonProc(isolated_env).start()
    try:
        with daemon.client() as c:
            sid = c.start("one_shot")
            final = c.wait(sid, timeout=60)
            assert final["status"] == "failed"
            assert "NOT_SET_ANYWHERE_KEY" in final["reason"] and "is not set" in final["reason"]
    finally:
        daemon.stop()
        kill_runners(isolated_env)
