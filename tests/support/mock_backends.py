"""Stand-ins for the inference servers the worker's HTTP backends talk to, speaking their real
wire formats on 127.0.0.1: Ollama (GET /api/tags, NDJSON POST /api/chat and /api/generate) and
OpenAI-compatible servers (GET /v1/models, server-sent events from POST /v1/chat/completions
and /v1/completions). Both answer every route; the classes differ in the models they list.

The "model" streams `text` word by word (each word with the whitespace before it is one token)
at `tokens_per_second` (None: as fast as it can), honouring max_tokens and stop sequences the
way the real servers do: a stop sequence ends the stream before it and is not sent. Responses
are chunked, as from Ollama's Go server and from uvicorn.

Usable without pytest, e.g. for a relay benchmark:

    server = MockOpenAI(tokens_per_second=50, text="...").start()
    ... server.url ...
    server.stop()

or from a shell: `python -m tests.support.mock_backends --kind openai --port 8080 --tps 30`.

Faults for tests: `status` answers generation requests with that HTTP status; `garbage_after`
sends a line that is not JSON after that many tokens; `drop_after` closes the connection after
that many tokens, mid-stream. `requests` records (path, JSON body) of every request, and
`disconnects` counts streams the client closed before the end.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

DEFAULT_TEXT = ("The quick brown fox jumps over the lazy dog. Then it runs into the forest, "
                "where it meets an owl who asks it a riddle about the moon and the stars.")


class _Disconnected(Exception):
    """The client closed the stream (a cancel)."""


class MockBackendServer:
    models: list[dict[str, Any]] = []

    def __init__(self, *, tokens_per_second: float | None = None, text: str = DEFAULT_TEXT,
                 models: list[dict[str, Any]] | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.tokens_per_second = tokens_per_second
        self.text = text
        if models is not None:
            self.models = models
        self.host, self.port = host, port
        self.status: int | None = None
        self.garbage_after: int | None = None
        self.drop_after: int | None = None
        self.requests: list[tuple[str, Any]] = []
        self.disconnects = 0
        self.disconnected = threading.Event()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> MockBackendServer:
        handler = type("Handler", (_Handler,), {"mock": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self._stopping.clear()
        self._thread = threading.Thread(target=self._server.serve_forever, name="mock-backend",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut the streams in flight."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(5)

    def __enter__(self) -> MockBackendServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the "model" -------------------------------------------------------------------------

    def tokens(self, limit: int | None, stops: list[str]) -> Iterator[tuple[str, str | None]]:
        """(token text, None) pieces, then ("", finish reason): "length" or "stop"."""
        words = re.findall(r"\s*\S+", self.text)
        sent = ""
        for count, word in enumerate(words):
            if limit is not None and count >= limit:
                yield "", "length"
                return
            candidate = sent + word
            cut = min((i for i in (candidate.find(s) for s in stops if s) if i >= 0), default=None)
            if cut is not None:
                if cut > len(sent):
                    yield candidate[len(sent):cut], None
                yield "", "stop"
                return
            if self.tokens_per_second:
                time.sleep(1 / self.tokens_per_second)
            if self._stopping.is_set():
                raise _Disconnected()
            sent = candidate
            yield word, None
        yield "", "stop"

    def _record(self, path: str, body: Any) -> None:
        with self._lock:
            self.requests.append((path, body))

    def _client_left(self) -> None:
        with self._lock:
            self.disconnects += 1
        self.disconnected.set()

    def bodies(self, path: str) -> list[Any]:
        with self._lock:
            return [body for p, body in self.requests if p == path]


class MockOllama(MockBackendServer):
    models = [
        {"name": "llama3.2:1b", "digest": "baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878"},
        {"name": "qwen2.5:0.5b", "digest": "a8b0c51577010a279d933d14c2a8ab4b268079d44c5c8830c0a93900f1827c67"},
    ]


class MockOpenAI(MockBackendServer):
    models = [{"name": "qwen2.5-0.5b-instruct"}, {"name": "smollm2-135m"}]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mock: MockBackendServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet in test output
        pass

    # -- routing -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        self.mock._record(self.path, None)
        if self.path == "/api/tags":
            self._json(200, {"models": [self._ollama_entry(m) for m in self.mock.models]})
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": m["name"], "object": "model", "created": 1700000000, "owned_by": "mock",
                 **({"max_model_len": m["max_model_len"]} if "max_model_len" in m else {})}
                for m in self.mock.models]})
        else:
            self._json(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            body = None
        self.mock._record(self.path, body)
        routes = {"/api/chat": self._ollama, "/api/generate": self._ollama,
                  "/v1/chat/completions": self._openai, "/v1/completions": self._openai}
        route = routes.get(self.path)
        if route is None:
            self._json(404, {"error": f"no route {self.path}"})
            return
        if not isinstance(body, dict):
            self._json(400, {"error": "body is not a JSON object"})
            return
        if self.mock.status is not None:
            message = "mock failure"
            error = {"error": message} if self.path.startswith("/api/") else \
                {"error": {"message": message, "type": "server_error", "code": self.mock.status}}
            self._json(self.mock.status, error)
            return
        names = [m["name"] for m in self.mock.models]
        if body.get("model") not in names:
            if self.path.startswith("/api/"):
                self._json(404, {"error": f"model \"{body.get('model')}\" not found, try pulling it first"})
            else:
                self._json(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                           "type": "NotFoundError", "code": 404}})
            return
        try:
            route(body)
        except (_Disconnected, BrokenPipeError, ConnectionResetError):
            self.mock._client_left()
            self.close_connection = True

    @staticmethod
    def _ollama_entry(model: dict[str, Any]) -> dict[str, Any]:
        return {"name": model["name"], "model": model["name"],
                "modified_at": "2025-01-01T00:00:00Z", "size": 1_300_000_000,
                "digest": model.get("digest", "0" * 64), "details": {"format": "gguf", "family": "llama",
                                                       "parameter_size": "1.2B",
                                                       "quantization_level": "Q8_0"}}

    # -- Ollama ------------------------------------------------------------------------------

    def _ollama(self, body: dict[str, Any]) -> None:
        options = body.get("options") or {}
        stops = options.get("stop") or []
        limit = options.get("num_predict")
        chat = self.path == "/api/chat"
        self._start_stream("application/x-ndjson")
        count = 0
        for text, finish in self.mock.tokens(limit if isinstance(limit, int) and limit >= 0 else None,
                                             stops):
            base = {"model": body["model"], "created_at": "2025-01-01T00:00:00.000000Z"}
            if finish is None:
                self._fault(count)
                count += 1
                piece = {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
                self._chunk(json.dumps({**base, **piece, "done": False}).encode() + b"\n")
            else:
                last = {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
                self._chunk(json.dumps({**base, **last, "done": True, "done_reason": finish,
                                        "total_duration": 1000, "load_duration": 10,
                                        "prompt_eval_count": 12, "prompt_eval_duration": 100,
                                        "eval_count": count, "eval_duration": 800}).encode() + b"\n")
        self._end_stream()

    # -- OpenAI ------------------------------------------------------------------------------

    def _openai(self, body: dict[str, Any]) -> None:
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        chat = self.path == "/v1/chat/completions"
        kind = "chat.completion.chunk" if chat else "text_completion"
        self._start_stream("text/event-stream")
        count = 0
        first = True
        for text, finish in self.mock.tokens(body.get("max_tokens"), stops):
            if finish is None:
                self._fault(count)
                count += 1
            if chat:
                delta = {"role": "assistant", "content": text} if first else {"content": text}
                choice = {"index": 0, "delta": delta if finish is None else {},
                          "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            first = False
            self._event({"id": "cmpl-mock", "object": kind, "created": 1700000000,
                         "model": body["model"], "choices": [choice]})
        if (body.get("stream_options") or {}).get("include_usage"):
            self._event({"id": "cmpl-mock", "object": kind, "created": 1700000000,
                         "model": body["model"], "choices": [],
                         "usage": {"prompt_tokens": 12, "completion_tokens": count,
                                   "total_tokens": 12 + count}})
        self._chunk(b"data: [DONE]\n\n")
        self._end_stream()

    def _event(self, payload: dict[str, Any]) -> None:
        self._chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    # -- wire --------------------------------------------------------------------------------

    def _fault(self, count: int) -> None:
        mock = self.mock
        if mock.garbage_after is not None and count == mock.garbage_after:
            self._chunk(b"this is not json {\n\n")
        if mock.drop_after is not None and count == mock.drop_after:
            self.wfile.flush()
            self.connection.shutdown(2)
            raise _Disconnected()

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a mock Ollama or OpenAI-compatible server.")
    parser.add_argument("--kind", choices=["ollama", "openai"], default="openai")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--tps", type=float, default=None, help="tokens per second (default: unpaced)")
    parser.add_argument("--text", default=DEFAULT_TEXT)
    args = parser.parse_args()
    cls = MockOllama if args.kind == "ollama" else MockOpenAI
    server = cls(tokens_per_second=args.tps, text=args.text, port=args.port).start()
    print(f"mock {args.kind} server on {server.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
