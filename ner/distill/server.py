"""A small OpenAI-compatible server: ``GET /v1/models``, ``POST /v1/chat/completions``.

It serves any teacher in this package (``RuleTeacher``, a ``LocalTeacher`` such as SmolLM2)
to any OpenAI client, ``ner distill annotate`` first: the tests start it on 127.0.0.1 and
talk to it over the network, so the client is tested against a real server, not a mock.

Standard library only (``http.server``), one thread per connection. It binds 127.0.0.1
unless told otherwise, has no authentication, and refuses bodies over ``max_body`` bytes.
``GET /stats`` counts the requests, which is how a resumed run shows that it did not ask
again what the cache already held. ``delay`` adds seconds to every completion, to give a
rule-based teacher an LLM's latency in measurements.
"""
from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ner.distill.backends import TeacherError

RESPONSE_FORMATS = ("text", "json_object", "json_schema")
MAX_BODY = 1 << 20


class TeacherServer(ThreadingHTTPServer):
    """``TeacherServer(teacher).start()`` serves in a background thread; ``stop()`` ends it.
    ``port=0`` picks a free port; ``url`` is the API base (``http://127.0.0.1:PORT/v1``).
    ``response_formats`` lists the structured-output modes it accepts (a server that
    offers fewer answers 400, as older llama.cpp servers do)."""

    daemon_threads = True

    def __init__(self, teacher, host: str = "127.0.0.1", port: int = 0, *, delay: float = 0.0,
                 max_body: int = MAX_BODY, response_formats=RESPONSE_FORMATS):
        super().__init__((host, port), _Handler)
        self.teacher = teacher
        self.delay = delay
        self.max_body = max_body
        self.response_formats = tuple(response_formats)
        self.counts = Counter()
        self._counts_lock = threading.Lock()
        self._thread = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def count(self, name: str) -> None:
        with self._counts_lock:
            self.counts[name] += 1

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):  # the client gave up (timed out, killed): normal
            self.count("clients_gone")
            return
        super().handle_error(request, client_address)

    def start(self) -> "TeacherServer":
        # A short poll interval: stop() waits for the loop's next poll.
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="teacher-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client pools its connections
    server: TeacherServer

    def log_message(self, format, *args):  # one line per request would drown the run's output
        pass

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/models":
            self._reply(200, {"object": "list", "data": [
                {"id": self.server.teacher.model, "object": "model", "created": 0, "owned_by": "ner-suite"}]})
        elif path == "/stats":
            with self.server._counts_lock:
                self._reply(200, dict(self.server.counts))
        else:
            self._error(404, f"no route GET {path}", "not_found")

    def do_POST(self):
        path = self.path.split("?")[0].rstrip("/")
        if path != "/v1/chat/completions":
            self.close_connection = True  # the body is left unread
            return self._error(404, f"no route POST {path}", "not_found")
        request = self._read_json()
        if request is None:
            return
        self.server.count("chat_completions")
        problem = self._check(request)
        if problem:
            return self._error(*problem)
        response_format = request.get("response_format") or {}
        schema = (response_format.get("json_schema") or {}).get("schema")
        max_tokens = request.get("max_completion_tokens") or request.get("max_tokens") or 512
        messages = [{"role": m["role"], "content": _content_text(m.get("content"))} for m in request["messages"]]
        try:
            if self.server.delay:
                time.sleep(self.server.delay)
            content = self.server.teacher.complete(messages, schema=schema, max_tokens=int(max_tokens))
        except TeacherError as error:
            self.server.count("errors")
            # 503 asks the client to come back; 422 says this request will never work.
            status = 503 if error.retryable else 422
            headers = {"Retry-After": f"{error.retry_after or 1:g}"} if error.retryable else {}
            return self._error(status, str(error), "teacher_unavailable" if error.retryable else "teacher_failed",
                               headers)
        except Exception as error:  # noqa: BLE001  (a broken model must answer 500, not hang)
            self.server.count("errors")
            return self._error(500, f"teacher failed: {error!r}", "server_error")
        self.server.count("answered")
        self._reply(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.server.teacher.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        })

    def _read_json(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            return self._error(411, "Content-Length required", "length_required")
        if int(length) > self.server.max_body:
            self.close_connection = True
            return self._error(413, f"body over {self.server.max_body} bytes", "request_too_large")
        try:
            request = json.loads(self.rfile.read(int(length)))
        except ValueError:
            return self._error(400, "body is not JSON", "invalid_json")
        if not isinstance(request, dict):
            return self._error(400, "body is not a JSON object", "invalid_request_error")
        return request

    def _check(self, request: dict):
        """(status, message, code) of what is wrong with a chat request, or None."""
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and _content_text(m.get("content")) is not None
                for m in messages):
            return 400, "messages must be a non-empty list of {role, content}", "invalid_request_error"
        model = request.get("model")
        if model is not None and model != self.server.teacher.model:
            return 404, f"model {model!r} not found; this server has {self.server.teacher.model!r}", "model_not_found"
        kind = (request.get("response_format") or {}).get("type", "text")
        if kind not in self.server.response_formats:
            return 400, f"response_format {kind!r} is not supported", "invalid_request_error"
        max_tokens = request.get("max_completion_tokens") or request.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            return 400, "max_tokens must be a positive integer", "invalid_request_error"
        return None

    def _error(self, status: int, message: str, code: str, headers: dict | None = None):
        self._reply(status, {"error": {"message": message, "type": "invalid_request_error"
                                       if status < 500 else "server_error", "code": code}}, headers)
        return None

    def _reply(self, status: int, payload: dict, headers: dict | None = None):
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def _content_text(content):
    """A message's text: a string, or OpenAI's list of {"type": "text", "text"} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
        return "".join(part["text"] for part in content)
    return None
