"""A real, scriptable OpenAI-compatible HTTP server for tests (no network, no mocks of the client).

It answers ``POST /v1/chat/completions`` in the OpenAI response format (``id``, ``object``, ``created``,
``model``, ``choices[0].message.content``, ``finish_reason``, ``usage``), so tests exercise the real
``openai`` client: its HTTP stack, timeouts and retries.

    >>> import os, tempfile
    >>> from refinelib.synth.llm import LLMClient, LLMConfig
    >>> os.environ["FAKE_OPENAI_KEY"] = "sk-local-test"  # a local server takes any key
    >>> with FakeOpenAI(lambda request: "hello") as server, tempfile.TemporaryDirectory() as tmp:
    ...     config = LLMConfig("fake-model", base_url=server.base_url, api_key_env="FAKE_OPENAI_KEY")
    ...     client = LLMClient(config, cache_dir=tmp)
    ...     client.complete([{"role": "user", "content": "hi"}], stage="script").text
    'hello'
    >>> del os.environ["FAKE_OPENAI_KEY"]

Scripting:

* ``responder(request_json) -> str | Fault``: decides each answer from the parsed request body
  (``model``, ``messages``, ``temperature``, ``top_p``, ``max_tokens``, ``seed``, ...). Returning a
  :class:`Fault` injects that fault for this request (a per-request mapping, e.g. by prompt content).
* ``server.faults``: a queue of :class:`Fault` consumed one per request, before the responder is asked
  (``server.faults.extend([rate_limited(), server_error()])``: the next two requests fail).
* ``delay``: seconds every request waits before answering (for concurrency tests).

Observation: ``server.requests`` holds every received body (faulted ones too, in arrival order; ``None``
for a body that was not JSON); ``server.headers`` their request headers (lower-case names);
``server.max_in_flight`` is the peak number of requests handled at once.
Usage counts are deterministic: whitespace-separated words of all message contents (prompt) and of the
answer (completion).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Fault:
    """One injected failure.

    Args:
        status: HTTP status to answer with (0: answer 200 after ``delay``, or a malformed body).
        headers: extra response headers (e.g. ``{"Retry-After": "0"}``).
        delay: seconds to wait before answering (longer than the client's timeout: a timeout).
        malformed: answer 200 with a body that is not JSON.
        message: the error message in the body of a ``status`` fault (e.g. one that echoes the key).
        content: the answer after ``delay`` (None: the responder's, or "" if the responder gave this fault).
    """

    status: int = 0
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    malformed: bool = False
    message: str | None = None
    content: str | None = None


def rate_limited(retry_after: str = "0") -> Fault:
    """429 Too Many Requests with a ``Retry-After`` header (the client then uses its own backoff for 0)."""
    return Fault(status=429, headers={"Retry-After": retry_after})


def server_error(status: int = 500) -> Fault:
    """A 5xx answer with an OpenAI-style error body."""
    return Fault(status=status)


def slow(seconds: float, content: str | None = None) -> Fault:
    """Answer normally, but only after ``seconds`` (make it longer than the client's timeout)."""
    return Fault(delay=seconds, content=content)


def malformed() -> Fault:
    """200 OK whose body is not JSON."""
    return Fault(malformed=True)


def words(text: str) -> int:
    """The fake tokenizer: whitespace-separated words."""
    return len(str(text).split())


class FakeOpenAI:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 (a free port) in a daemon thread; use it as a context manager.

    Args:
        responder: ``request_json -> str | Fault`` (default: echo the last message's content).
        delay: seconds every request waits before it is answered.
        faults: initial contents of the ``faults`` queue.
    """

    def __init__(self, responder: Callable[[dict], str | Fault] | None = None, *, delay: float = 0.0,
                 faults: list[Fault] | tuple[Fault, ...] = ()) -> None:
        self.responder = responder or (lambda request: f"echo: {request['messages'][-1]['content']}")
        self.delay = delay
        self.faults: deque[Fault] = deque(faults)
        self.requests: list[dict | None] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()  # wakes sleeping handlers on shutdown
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``, what ``OpenAI(base_url=...)`` expects."""
        if self._httpd is None:
            raise RuntimeError("FakeOpenAI is not running: use it as `with FakeOpenAI(...) as server:`")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _answer(self, body: dict | None, headers: dict[str, str]) -> tuple[int, dict, bytes]:
        """(status, headers, payload) for one request; runs on the handler's thread."""
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            fault = self.faults.popleft() if self.faults else None
        if body is None:
            return 400, {}, _error("request body is not JSON", "invalid_request_error")
        answer = None
        if fault is None:
            answer = self.responder(body)
            if isinstance(answer, Fault):
                fault = answer
                answer = fault.content if fault.content is not None else ""
        if self.delay or (fault and fault.delay):
            self._closing.wait(self.delay + (fault.delay if fault else 0.0))
        if fault and fault.malformed:
            return 200, {}, b'{"id": "chatcmpl-broken", "choices": [ this is not json'
        if fault and fault.status:
            kind = "rate_limit_exceeded" if fault.status == 429 else "server_error"
            message = fault.message or f"injected fault {fault.status}"
            return fault.status, dict(fault.headers), _error(message, kind)
        if answer is None:  # a slow answer from the queue: its content, else the responder's
            answer = fault.content if fault.content is not None else self.responder(body)
        content, finish = str(answer), "stop"
        limit = body.get("max_tokens")
        if isinstance(limit, int) and words(content) > limit:  # cut at max_tokens, as a real server does
            content, finish = content[: [m.end() for m in re.finditer(r"\S+", content)][limit - 1]], "length"
        prompt = sum(words(m.get("content", "")) for m in body.get("messages", []))
        payload = {
            "id": f"chatcmpl-fake-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": words(content),
                      "total_tokens": prompt + words(content)},
        }
        return 200, {}, json.dumps(payload).encode()


def _error(message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": kind}}).encode()


def _handler(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the openai client expects
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {}, _error(f"no route {self.path}", "not_found"))
                return
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            with server._lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                received = {name.lower(): value for name, value in self.headers.items()}
                status, headers, payload = server._answer(body, received)
            finally:
                with server._lock:
                    server.in_flight -= 1
            self._send(status, headers, payload)

        def _send(self, status: int, headers: dict, payload: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and went away
                self.close_connection = True

        def log_message(self, format, *args) -> None:  # quiet: pytest shows only failures
            pass

    return Handler
