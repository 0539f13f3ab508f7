"""A paced OpenAI-compatible server for the relay benchmarks (bench_vs_litellm.py).

One asyncio process on 127.0.0.1 speaking just enough HTTP/1.1 (keep-alive, chunked SSE) for
`GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions`, streamed or not. It
is not tests/support/mock_backends.py because that one spends a thread per stream, and at 200
concurrent streams the stand-in must not be what a proxy is measured against.

The "model" emits exactly max_tokens tokens at --tps tokens per second per request (0: as fast
as it can), each on its own absolute schedule so a late wake-up does not push the rest back.
Every token carries its sequence number and the moment it was sent, on this machine's
monotonic clock (CLOCK_MONOTONIC, the same in every process), and the first token also the
moment the request arrived:

    <R1234.500000><0@1234.550000> <1@1234.600000> <2@1234.650000> ...

so a client on the same machine can tell, whatever proxy sits in between, how long the request
took to reach the model, how late each chunk arrived, and whether any was lost or reordered.

Run: python tests/bench/paced_openai.py --port 8089 --tps 20   (prints "listening on URL")
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

MODEL = "mock-model"
DEFAULT_MAX_TOKENS = 16


def token_text(seq: int, emitted: float, received: float | None) -> str:
    head = f"<R{received:.6f}>" if received is not None else " "
    return f"{head}<{seq}@{emitted:.6f}>"


class PacedModel:
    def __init__(self, tokens_per_second: float) -> None:
        self.interval = 1 / tokens_per_second if tokens_per_second > 0 else 0.0

    async def tokens(self, count: int, received: float):
        """(seq, text) for `count` tokens, paced from `received`."""
        for seq in range(count):
            if self.interval:
                delay = received + (seq + 1) * self.interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield seq, token_text(seq, time.monotonic(), received if seq == 0 else None)


class Server:
    def __init__(self, model: PacedModel) -> None:
        self.model = model

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                received = time.monotonic()
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in header_lines if line)}
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                keep_alive = await self.route(writer, method, path.split("?", 1)[0], body, received)
                if not keep_alive or headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def route(self, writer, method: str, path: str, raw: bytes, received: float) -> bool:
        if method == "GET" and path == "/v1/models":
            return await _json(writer, 200, {"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 1700000000, "owned_by": "bench",
                 "max_model_len": 32768}]})
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            return await _json(writer, 404, {"error": {"message": f"no route {method} {path}",
                                                       "type": "invalid_request_error"}})
        try:
            body = json.loads(raw)
            count = int(body.get("max_tokens") or body.get("max_completion_tokens")
                        or DEFAULT_MAX_TOKENS)
        except (ValueError, TypeError, AttributeError):
            return await _json(writer, 400, {"error": {"message": "bad JSON body",
                                                       "type": "invalid_request_error"}})
        chat = path == "/v1/chat/completions"
        if body.get("stream"):
            await self.stream(writer, body, chat, count, received)
            return True
        texts = [text async for _, text in self.model.tokens(count, received)]
        content = "".join(texts)
        choice = ({"index": 0, "message": {"role": "assistant", "content": content},
                   "finish_reason": "length"} if chat else
                  {"index": 0, "text": content, "finish_reason": "length"})
        return await _json(writer, 200, {
            "id": "cmpl-bench", "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": body.get("model", MODEL), "choices": [choice],
            "usage": {"prompt_tokens": 8, "completion_tokens": count, "total_tokens": 8 + count}})

    async def stream(self, writer, body: dict, chat: bool, count: int, received: float) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        kind = "chat.completion.chunk" if chat else "text_completion"
        base = {"id": "cmpl-bench", "object": kind, "created": int(time.time()),
                "model": body.get("model", MODEL)}
        async for seq, text in self.model.tokens(count, received):
            if chat:
                delta = {"role": "assistant", "content": text} if seq == 0 else {"content": text}
                choice = {"index": 0, "delta": delta, "finish_reason": None}
            else:
                choice = {"index": 0, "text": text, "finish_reason": None}
            _event(writer, {**base, "choices": [choice]})
            await writer.drain()
        last = {"index": 0, "delta": {}, "finish_reason": "length"} if chat else \
            {"index": 0, "text": "", "finish_reason": "length"}
        _event(writer, {**base, "choices": [last]})
        if (body.get("stream_options") or {}).get("include_usage"):
            _event(writer, {**base, "choices": [], "usage": {
                "prompt_tokens": 8, "completion_tokens": count, "total_tokens": 8 + count}})
        _chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def _chunk(writer, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))


def _event(writer, payload: dict) -> None:
    _chunk(writer, b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


async def _json(writer, status: int, payload: dict) -> bool:
    data = json.dumps(payload).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    return True


async def serve(port: int, tokens_per_second: float) -> None:
    server = Server(PacedModel(tokens_per_second))
    listener = await asyncio.start_server(server.handle, "127.0.0.1", port, backlog=2048)
    bound = listener.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{bound}", flush=True)
    async with listener:
        await listener.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--tps", type=float, default=20.0, help="tokens per second per request; 0: unpaced")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.tps))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
