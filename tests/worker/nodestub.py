"""A stand-in node for agent tests: a real WebSocket server on 127.0.0.1, any free port.

Each accepted connection is handed to the next scripted session coroutine (the last one
repeats). Every frame the agent sends is checked with the node's own validator.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Awaitable, Callable, Iterator

from websockets.asyncio.server import Server, ServerConnection, serve

from worker import protocol
from worker.backends import BackendError, Embeddings, Finish, ModelInfo, Piece, Request

Session = Callable[[ServerConnection], Awaitable[None]]
TIMEOUT = 10.0


class NodeStub:
    def __init__(self, *sessions: Session, port: int = 0) -> None:
        self.sessions = list(sessions)
        self.port = port
        self.connections = 0
        self.paths: list[str] = []
        self.server: Server | None = None
        self.url = ""

    async def __aenter__(self) -> NodeStub:
        self.server = await serve(self._handle, "127.0.0.1", self.port)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        index = self.connections
        self.connections += 1
        self.paths.append(ws.request.path if ws.request else "")
        await self.sessions[min(index, len(self.sessions) - 1)](ws)


async def receive(ws: ServerConnection, *, skip_heartbeats: bool = True) -> dict[str, Any]:
    """The agent's next frame, validated as the real node would."""
    while True:
        frame = protocol.decode_agent_frame(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if not (skip_heartbeats and frame["type"] == "heartbeat"):
            return frame


async def welcome(ws: ServerConnection, heartbeat_interval: float = 60.0) -> dict[str, Any]:
    hello = await receive(ws)
    assert hello["type"] == "hello"
    await ws.send(protocol.encode(protocol.welcome(worker_id="w-1",
                                                   heartbeat_interval=heartbeat_interval)))
    return hello


async def frames_until_finished(ws: ServerConnection, job_id: str) -> list[dict[str, Any]]:
    """Frames about `job_id` up to and including its job.done or job.error."""
    frames = []
    while True:
        frame = await receive(ws)
        if frame.get("job_id") == job_id:
            frames.append(frame)
            if frame["type"] in ("job.done", "job.error"):
                return frames


def assign(job_id: str, digest: str, model: str = "fake-model", **params: Any) -> str:
    return protocol.encode(protocol.job_assign(
        job_id=job_id, model=model, model_digest=digest,
        messages=[{"role": "user", "content": "Say hello."}],
        params={"max_tokens": 16, "temperature": 0, "top_p": 1, "seed": 7, "stop": [], **params}))


class FakeBackend:
    """Yields scripted pieces, optionally slowly, and honours the cancel event like the real one."""

    name = "fake"
    model_id = "fake-model"
    digest = "sha256:" + "ab" * 32
    context_length = 128

    def __init__(self, pieces: tuple[str, ...] = ("Hel", "lo", " world"), delay: float = 0.0,
                 error: BaseException | None = None, models: list[ModelInfo] | None = None) -> None:
        self.pieces, self.delay, self.error = pieces, delay, error
        self.models = models or [ModelInfo(self.model_id, self.digest, self.name,
                                           self.context_length)]
        self.requests: list[Request] = []
        self.model_ids: list[str] = []
        self.params: list[dict[str, Any]] = []
        self.cancelled = threading.Event()

    def generate(self, model_id: str, request: Request, params: dict[str, Any],
                 cancel: threading.Event) -> Iterator[Piece]:
        self.model_ids.append(model_id)
        self.requests.append(request)
        self.params.append(params)
        if self.error is not None:
            raise self.error
        count = 0
        for piece in self.pieces:
            time.sleep(self.delay)
            if cancel.is_set():
                self.cancelled.set()
                yield Finish("cancelled", count)
                return
            count += 1
            yield piece
        yield Finish("length", count)


def refusing_backend(code: str) -> FakeBackend:
    return FakeBackend(error=BackendError(code, "refused by the test"))


class FakeEmbedder:
    """An embedding backend whose vectors are [len(text), 1.0]; slow on request."""

    name = "fake-embed"
    model_id = "fake-embedding"
    digest = "sha256:" + "cd" * 32

    def __init__(self, delay: float = 0.0, error: BaseException | None = None) -> None:
        self.delay, self.error = delay, error
        self.models = [ModelInfo(self.model_id, self.digest, self.name, 64, "embedding")]
        self.inputs: list[list[str]] = []

    def embed(self, model_id: str, inputs: list[str], cancel: threading.Event) -> Embeddings:
        self.inputs.append(inputs)
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        if cancel.is_set():
            raise BackendError("cancelled", "the job was cancelled")
        return Embeddings([[float(len(text)), 1.0] for text in inputs],
                          sum(len(text.split()) for text in inputs))


def embed(job_id: str, digest: str, inputs: list[str], model: str = "fake-embedding") -> str:
    return protocol.encode(protocol.embed_assign(job_id=job_id, model=model, model_digest=digest,
                                                 input=inputs))


async def frames_until_embedded(ws: ServerConnection, job_id: str) -> dict[str, Any]:
    """The embed.done or job.error that answers `job_id`."""
    while True:
        frame = await receive(ws)
        if frame.get("job_id") == job_id and frame["type"] in ("embed.done", "job.error"):
            return frame
