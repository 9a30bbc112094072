"""A real OpenAI-compatible chat-completions server on 127.0.0.1, driven by a script.

Tests push scripted responses (status, headers, JSON or raw body, delay before answering) and
read back every request the server received. It speaks HTTP through a real socket, so the
proposer is exercised through the official ``openai`` client exactly as against a live endpoint.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_PATH = "/v1/chat/completions"


@dataclass
class Scripted:
    """One scripted reply. ``body``: a dict is sent as JSON, a str as is."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def completion(content: str | None, *, finish_reason: str = "stop", prompt_tokens: int = 100,
               completion_tokens: int = 50, model: str = "test-model", no_choices: bool = False) -> Scripted:
    """A 200 chat.completion with one choice (or none)."""
    choices = [] if no_choices else [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": finish_reason}]
    return Scripted(body={
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


def error(status: int, message: str, *, code: str | None = None, type_: str = "invalid_request_error",
          headers: dict[str, str] | None = None) -> Scripted:
    """An error reply in OpenAI's shape: {"error": {"message", "type", "code"}}."""
    return Scripted(status=status, body={"error": {"message": message, "type": type_, "code": code, "param": None}},
                    headers=headers or {})


class FakeOpenAIServer:
    """ThreadingHTTPServer on a free port; ``url`` is the ``base_url`` to give the client."""

    def __init__(self, responder: Callable[[Any], Scripted] | None = None, answer_probes: bool = False) -> None:
        self.script: queue.Queue[Scripted] = queue.Queue()
        # answer_probes: ``discover``'s pre-flight probe (max_tokens 1) is answered "OK" without taking a scripted
        # reply, for scenarios that start several processes whose probes would otherwise interleave with proposals
        self.answer_probes = answer_probes
        self.responder = responder  # answers from the request body once the script is empty (a judge's rating)
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True  # a handler still sleeping past a client timeout must not block close
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-openai", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def push(self, *replies: Scripted) -> None:
        for reply in replies:
            self.script.put(reply)

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies received, in order."""
        with self._lock:
            return [r["json"] for r in self.requests]

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"null")
                except json.JSONDecodeError:
                    body = None
                with server._lock:
                    server.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in
                                                                         self.headers.items()}, "json": body})
                if self.path != CHAT_PATH:
                    reply = error(404, f"no route {self.path}", code="not_found")
                elif server.answer_probes and isinstance(body, dict) and body.get("max_tokens") == 1:
                    reply = completion("OK")
                else:
                    try:
                        reply = server.script.get_nowait()
                    except queue.Empty:
                        reply = (server.responder(body) if server.responder is not None else
                                 error(500, "the test script has no reply left", type_="server_error"))
                time.sleep(reply.delay)
                payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                data = payload.encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test): nothing to answer

        return Handler


def closed_url() -> str:
    """A ``base_url`` on 127.0.0.1 where nothing listens (a port just bound and released): connection refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


PROXY_AND_BASE_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                       "OPENAI_BASE_URL")


@contextmanager
def loopback_server(monkeypatch, key_env: str, key: str) -> Iterator[FakeOpenAIServer]:
    """A started server with the key in ``key_env`` and no proxy or base URL in the way (the body of the
    ``server`` fixtures of the proposer tests)."""
    for var in PROXY_AND_BASE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(key_env, key)
    srv = FakeOpenAIServer().start()
    try:
        yield srv
    finally:
        srv.stop()
