"""The load generator of bench_vs_litellm.py: a small asyncio HTTP/1.1 client and the figures.

A client of its own rather than the openai SDK or httpx: on 2 shared cores the client's own cost
per chunk would otherwise be a sizeable part of what is measured, and it is the same for every
path only if it is small. It keeps connections alive, reads Content-Length, chunked and
close-delimited bodies, and timestamps every server-sent event as it is read.

What a request yields (`Result`) is matched against the stamps the paced mock writes into its
tokens (see paced_openai.py), so each figure is about the path, not about the model's pacing.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from dataclasses import dataclass, field

REQUEST_TIMEOUT = 90.0  # past the node's 30 s queue timeout: a hung request is an error, not a hang
_STAMP = re.compile(r"<(\d+)@([0-9.]+)>")
_RECEIVED = re.compile(r"<R([0-9.]+)>")


@dataclass
class Target:
    name: str
    port: int
    model: str
    path: str = "/v1/chat/completions"
    api_key: str | None = None
    extra: dict = field(default_factory=dict)  # request fields a path needs (peer_tier)

    def body(self, *, stream: bool, max_tokens: int, prompt: str) -> bytes:
        payload = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                   "max_tokens": max_tokens, "stream": stream, **self.extra}
        return json.dumps(payload).encode()


@dataclass
class Result:
    ok: bool
    started: float
    ended: float = 0.0
    error: str = ""
    chunks: list[tuple[float, str]] = field(default_factory=list)  # (read at, content text)
    text: str = ""

    def stamps(self) -> list[tuple[float, int, float]]:
        """(read at, seq, emitted at) of every token, in arrival order."""
        found = []
        for read_at, text in self.chunks or [(self.ended, self.text)]:
            found.extend((read_at, int(seq), float(at)) for seq, at in _STAMP.findall(text))
        return found

    def received_at(self) -> float | None:
        match = _RECEIVED.search(self.text)
        return float(match.group(1)) if match else None


class Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=2**20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, target: Target, body: bytes, stream: bool) -> Result:
        result = Result(ok=False, started=time.monotonic())
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await self._exchange(target, body, stream, result)
        except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
            self.close()
            result.error = f"{type(exc).__name__}: {exc}"[:200]
        result.ended = result.ended or time.monotonic()
        return result

    async def _exchange(self, target: Target, body: bytes, stream: bool, result: Result) -> None:
        if self.writer is None:
            await self._open()
        auth = f"Authorization: Bearer {target.api_key}\r\n" if target.api_key else ""
        self.writer.write(f"POST {target.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{auth}"
                          f"Content-Type: application/json\r\nAccept: */*\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        events = _SseParser()
        body_parts = []
        async for piece in self._body(headers):
            now = time.monotonic()
            if stream and status == 200:
                for data in events.feed(piece):
                    _on_event(result, data, now)
            else:
                body_parts.append(piece)
        result.ended = time.monotonic()
        if headers.get("connection", "").lower() == "close":
            self.close()
        if status != 200:
            result.error = f"HTTP {status}: {b''.join(body_parts)[:200]!r}"
            return
        if stream:
            result.text = "".join(text for _, text in result.chunks)
            result.ok = events.done and not result.error
            if not events.done and not result.error:
                result.error = "stream ended without [DONE]"
        else:
            payload = json.loads(b"".join(body_parts))
            result.text = payload["choices"][0]["message"]["content"]
            result.ok = True

    async def _body(self, headers: dict):
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    return
                data = await self.reader.readexactly(size + 2)
                yield data[:-2]
        elif "content-length" in headers:
            yield await self.reader.readexactly(int(headers["content-length"]))
        else:
            while data := await self.reader.read(65536):
                yield data
            self.close()


class _SseParser:
    def __init__(self) -> None:
        self.buffer = b""
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        events = []
        while b"\n\n" in self.buffer:
            event, self.buffer = self.buffer.split(b"\n\n", 1)
            lines = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
            if lines:
                events.append(b"\n".join(lines))
        self.done = self.done or b"[DONE]" in events
        return events


def _on_event(result: Result, data: bytes, now: float) -> None:
    if data == b"[DONE]":
        return
    try:
        payload = json.loads(data)
    except ValueError:
        result.error = f"not JSON: {data[:100]!r}"
        return
    if "error" in payload:
        result.error = f"error event: {json.dumps(payload['error'])[:200]}"
        return
    for choice in payload.get("choices") or []:
        text = (choice.get("delta") or {}).get("content")
        if text:
            result.chunks.append((now, text))


# -- running load -----------------------------------------------------------------------------

async def closed_loop(target: Target, *, concurrency: int, requests: int, stream: bool,
                      max_tokens: int, prompt: str = "Say something.") -> list[Result]:
    """`concurrency` clients, each sending its next request as soon as its last one ends, until
    `requests` were sent. Clients start spread over 50 ms, not in one synchronized burst."""
    body = target.body(stream=stream, max_tokens=max_tokens, prompt=prompt)
    remaining = [requests]
    results: list[Result] = []

    async def client(index: int) -> None:
        await asyncio.sleep(0.05 * index / concurrency)
        conn = Connection(target.port)
        try:
            while remaining[0] > 0:
                remaining[0] -= 1
                results.append(await conn.post(target, body, stream))
        finally:
            conn.close()

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return results


async def sustained(target: Target, *, concurrency: int, seconds: float, warmup: float,
                    max_tokens: int) -> tuple[float, int, int]:
    """(completed requests per second after the warm-up, completed, failed) of a closed loop."""
    body = target.body(stream=False, max_tokens=max_tokens, prompt="Hi.")
    start = time.monotonic()
    window = (start + warmup, start + warmup + seconds)
    counts = {"ok": 0, "failed": 0}

    async def client() -> None:
        conn = Connection(target.port)
        try:
            while time.monotonic() < window[1]:
                result = await conn.post(target, body, False)
                if window[0] <= result.ended <= window[1]:
                    counts["ok" if result.ok else "failed"] += 1
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return counts["ok"] / seconds, counts["ok"], counts["failed"]


# -- figures ----------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def overheads(results: list[Result]) -> list[float]:
    """Per successful non-streamed request: end-to-end time less the model's own time (from the
    request's arrival at the mock to its last token), in seconds."""
    found = []
    for result in results:
        stamps, arrived = result.stamps(), result.received_at()
        if result.ok and stamps and arrived is not None:
            found.append((result.ended - result.started) - (max(s[2] for s in stamps) - arrived))
    return found


def ttft_overheads(results: list[Result]) -> list[float]:
    """Per stream: time to the first content chunk less the model's own time to its first token."""
    found = []
    for result in results:
        stamps, arrived = result.stamps(), result.received_at()
        if result.ok and stamps and arrived is not None:
            read_at, _, emitted = stamps[0]
            found.append((read_at - result.started) - (emitted - arrived))
    return found


@dataclass
class StreamFigures:
    streams: int
    failed: int
    gap_p50: float
    gap_p99: float
    late_p99: float  # chunk read time less its emission time
    lost: int
    reordered: int
    duplicated: int
    errors: list[str]


def stream_figures(results: list[Result], max_tokens: int) -> StreamFigures:
    gaps, lateness, lost, reordered, duplicated = [], [], 0, 0, 0
    for result in results:
        stamps = result.stamps()
        seqs = [seq for _, seq, _ in stamps]
        if result.ok:
            lost += len(set(range(max_tokens)) - set(seqs))
        duplicated += len(seqs) - len(set(seqs))
        reordered += sum(1 for a, b in zip(seqs, seqs[1:]) if b < a)
        reads = [read_at for read_at, _, _ in stamps]
        gaps.extend(b - a for a, b in zip(reads, reads[1:]))
        lateness.extend(read_at - emitted for read_at, _, emitted in stamps)
    failed = [r for r in results if not r.ok]
    # A failed stream lost whatever it did not deliver: count it in, it is the worst kind of loss.
    lost += sum(max_tokens - len({seq for _, seq, _ in r.stamps()}) for r in failed)
    return StreamFigures(len(results), len(failed), percentile(gaps, 50), percentile(gaps, 99),
                         percentile(lateness, 99), lost, reordered, duplicated,
                         sorted({r.error for r in failed})[:3])


def summary(values: list[float]) -> tuple[float, float, float]:
    return (percentile(values, 50), percentile(values, 99), statistics.fmean(values) if values else float("nan"))
