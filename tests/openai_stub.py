"""A local OpenAI-compatible chat-completions server for tests: a real HTTP server on
127.0.0.1 (stdlib ThreadingHTTPServer, HTTP/1.1 keep-alive) that the real `openai`
client talks to. Answers are deterministic; faults are injected on request.

    with OpenAIStub(responder=lambda model, messages, body: "42") as stub:
        client = LLMClient(model="judge", base_url=stub.base_url, api_key="test-key")
        stub.script("429", "500")        # the next two requests fail like this, in order
        stub.latency = 0.2               # every request waits this long before answering

Faults (one per request, taken from the script queue first, else from `fault_rate`):
  "429"        status 429 with Retry-After (`retry_after` seconds, default 0.05)
  "500"        status 500
  "malformed"  status 200 with a body that is not JSON
  "empty"      status 200, a well-formed completion with empty content
  "hang"       sleeps `hang_seconds` before answering (a client timeout fires first)
Every request is recorded in `stub.requests` (model, messages, body, fault, time) so tests
can count calls per model. The pytest fixture `openai_stub` (below) yields a started server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import pytest

Responder = Callable[[str, list, dict], str]


def default_responder(model: str, messages: list, body: dict) -> str:
    """A deterministic answer that depends only on the model and the messages."""
    digest = hashlib.sha256(json.dumps([model, messages], sort_keys=True).encode()).hexdigest()[:12]
    return f"stub answer {digest}"


def _count_tokens(text: str) -> int:
    return max(1, len(text.split()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do; the client pools connections
    server: "_Server"

    def log_message(self, fmt, *args):  # quiet: tests read the recorded requests instead
        pass

    def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        stub = self.server.stub
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
            return
        fault = stub.next_fault()
        model, messages = body.get("model", ""), body.get("messages", [])
        stub.record(model, messages, body, fault, self.headers.get("Authorization", ""))
        with stub.in_flight():
            self._answer(stub, fault, model, messages, body)

    def _answer(self, stub: "OpenAIStub", fault: str | None, model: str, messages: list, body: dict):
        if stub.latency:
            time.sleep(stub.latency)
        if fault == "hang":
            time.sleep(stub.hang_seconds)
        if fault == "429":
            error = {"error": {"message": "rate limited (stub)", "type": "rate_limit_error"}}
            self._send(429, json.dumps(error).encode(), {"Retry-After": str(stub.retry_after)})
            return
        if fault == "500":
            self._send(500, json.dumps({"error": {"message": "internal error (stub)"}}).encode())
            return
        if fault == "malformed":
            self._send(200, b'{"id": "chatcmpl-stub", "choices": [ this is not json')
            return
        content = "" if fault == "empty" else stub.responder(model, messages, body)
        prompt_tokens = sum(_count_tokens(str(m.get("content", ""))) for m in messages)
        completion = {
            "id": f"chatcmpl-stub-{len(stub.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": _count_tokens(content),
                      "total_tokens": prompt_tokens + _count_tokens(content)},
        }
        self._send(200, json.dumps(completion).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a burst of 64+ new connections must not be refused
    stub: "OpenAIStub"


class OpenAIStub:
    def __init__(self, responder: Responder = default_responder, latency: float = 0.0,
                 retry_after: float = 0.05, fault_rate: dict[str, float] | None = None,
                 hang_seconds: float = 5.0, seed: int = 0):
        self.responder = responder
        self.latency = latency
        self.retry_after = retry_after
        self.fault_rate = dict(fault_rate or {})
        self.hang_seconds = hang_seconds
        self.requests: list[dict] = []
        self._script: deque[str] = deque()
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._active = 0
        self.max_in_flight = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def script(self, *faults: str) -> None:
        """Queue faults for the next requests, in order ("ok" for a normal answer)."""
        with self._lock:
            self._script.extend(faults)

    def next_fault(self) -> str | None:
        with self._lock:
            if self._script:
                fault = self._script.popleft()
                return None if fault == "ok" else fault
            for fault, rate in self.fault_rate.items():
                if self._random.random() < rate:
                    return fault
        return None

    def record(self, model: str, messages: list, body: dict, fault: str | None, auth: str) -> None:
        with self._lock:
            self.requests.append({"model": model, "messages": messages, "body": body,
                                  "fault": fault, "authorization": auth, "time": time.time()})

    @contextlib.contextmanager
    def in_flight(self):
        """Track how many requests are being answered at once (`max_in_flight`)."""
        with self._lock:
            self._active += 1
            self.max_in_flight = max(self.max_in_flight, self._active)
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    def calls(self, model: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if model is None or r["model"] == model)

    def start(self) -> "OpenAIStub":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.stub = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "OpenAIStub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def openai_stub(monkeypatch):
    """A started stub; OPENAI_BASE_URL/OPENAI_API_KEY point at it for code that reads the env."""
    with OpenAIStub() as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
        yield stub
