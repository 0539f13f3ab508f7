"""The agent: one outbound WebSocket to a node, serving jobs with its backends' models.

The agent dials out (so a worker behind NAT needs no open port), says `hello` listing every
model of every backend, waits for `welcome`, then serves `job.assign` (generation) and
`embed.assign` (embeddings) frames one at a time until the link drops, when it
reconnects with exponential backoff. A node that closes with a token code (bad, revoked,
replaced) ends the agent: retrying a rejected token would only hammer the node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from worker import __version__, protocol
from worker.backends import BackendError, Finish, ModelInfo, Request
from worker.commitment import commitment_hash, commitment_inputs, commitment_sign, public_key_text
from worker.hardware import hardware_info  # noqa: F401  (re-exported: the CLI builds agents from here)
from worker.prompt import format_chat, job_prompt
from worker.embedding_jobs import EmbeddingJobs
from worker.sealed_jobs import SealedJobs
from worker.validation import can_validate, validation_result

log = logging.getLogger("worker.agent")
# Every frame on the node link, at DEBUG only (--log-level DEBUG): for an operator debugging the
# protocol, and for the tests that check a confidential job's plaintext never reaches this process.
wire_log = logging.getLogger("worker.wire")

AGENT_PATH = "/ws/agent/"
DEFAULT_HEARTBEAT_INTERVAL = 15.0
# A job whose client is not streaming (job.assign's "stream": false) gets its first piece at
# once (the node measures time to first token from it) and the rest in batches: a frame costs
# the agent and the node about as much as the piece it carries, and nobody reads the pieces
# until the answer is whole. A batch goes out after this long or this many characters, so a
# long answer still reaches the node as it is made (a cancel charges what was relayed).
BATCH_SECONDS = 0.5
BATCH_CHARS = 16_384
FATAL_CLOSE_CODES = {
    protocol.CLOSE_BAD_TOKEN: "the node rejected the worker token",
    protocol.CLOSE_REVOKED: "this worker's token has been revoked",
    protocol.CLOSE_REPLACED: "another agent connected with the same token",
}


class FatalError(Exception):
    """The node refused this agent for good; reconnecting would not help."""

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


def agent_url(server: str) -> str:
    """http(s)://host[/prefix] or ws(s)://host[/prefix] -> ws(s)://host[/prefix]/ws/agent/."""
    parts = urlsplit(server.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"server must be an http(s):// or ws(s):// URL, got {server!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(AGENT_PATH.rstrip("/")):
        path += AGENT_PATH.rstrip("/")
    return urlunsplit((scheme, parts.netloc, path + "/", parts.query, ""))


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter, so a node restart is not met by a synchronized herd."""
    ceiling = min(cap, base * (2 ** min(attempt, 30)))
    return ceiling * rng.uniform(0.5, 1.0)


@dataclass
class AgentConfig:
    server: str
    token: str
    name: str | None = None
    # Signs every job's commitment; None: a key for this process only (tests, benchmarks).
    signing_key: Ed25519PrivateKey | None = None
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    welcome_timeout: float = 15.0


@dataclass
class _Job:
    id: str
    cancel: threading.Event
    task: asyncio.Task[None]
    sealed: bool = False  # a confidential job, run by the enclave process


@dataclass(frozen=True)
class _Served:
    backend: Any  # a worker.backends.Backend or EmbeddingBackend
    model: ModelInfo


class Agent(EmbeddingJobs, SealedJobs):
    def __init__(self, config: AgentConfig, backends: list[Any], hardware: dict[str, Any],
                 rng: random.Random | None = None, enclave: Any = None) -> None:
        """`backends`: Backend and EmbeddingBackend objects; each of their models is served.
        `enclave`: a worker.enclave.host.EnclaveProcess whose models take sealed jobs, or None."""
        self.config = config
        self.backends = list(backends)
        self.served = [_Served(b, m) for b in self.backends for m in b.models]
        self.enclave = enclave
        if not self.served and not (enclave is not None and enclave.models):
            raise ValueError("an agent must serve at least one model")
        self.hardware = hardware
        self.signing_key = config.signing_key or Ed25519PrivateKey.generate()
        self.url = agent_url(config.server)
        self.worker_id: str | None = None
        self.heartbeat_interval = DEFAULT_HEARTBEAT_INTERVAL
        self._rng = rng or random.Random()
        self._job: _Job | None = None

    # -- connection lifecycle ---------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled; raises FatalError when the node refuses this agent."""
        attempt = 0
        while True:
            welcomed = False
            try:
                welcomed = await self._session()
                reason = "connection closed by the node"
            except FatalError:
                raise
            except (OSError, WebSocketException) as exc:  # unreachable, refused upgrade, dropped
                reason = str(exc) or type(exc).__name__
            except Exception as exc:  # a daemon must outlive one bad connection
                log.exception("unexpected error in the connection to %s", self.url)
                reason = f"{type(exc).__name__}: {exc}"
            attempt = 0 if welcomed else attempt + 1
            delay = backoff_delay(max(attempt - 1, 0), self.config.backoff_base,
                                  self.config.backoff_max, self._rng)
            log.warning("disconnected from %s (%s); reconnecting in %.1fs", self.url, reason, delay)
            await asyncio.sleep(delay)

    async def _session(self) -> bool:
        """One connection. Returns whether the node welcomed us (resets the backoff)."""
        welcomed = False
        try:
            async with connect(self.url, open_timeout=10, close_timeout=5,
                               user_agent_header=f"peer-cycles-worker/{__version__}") as ws:
                await self._handshake(ws)
                welcomed = True
                await self._serve(ws)
                self._raise_if_fatal(ws.close_code, ws.close_reason)
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                self._raise_if_fatal(exc.rcvd.code, exc.rcvd.reason)
            raise
        return welcomed

    @staticmethod
    def _raise_if_fatal(code: int | None, reason: str | None) -> None:
        if code in FATAL_CLOSE_CODES:
            detail = f": {reason}" if reason else ""
            raise FatalError(f"{FATAL_CLOSE_CODES[code]} (close code {code}{detail})", code)

    def _hello(self) -> dict[str, Any]:
        enclave_models, attestation = self.enclave_announcement()
        frame = protocol.hello(token=self.config.token, agent_version=__version__,
                               models=[{**s.model.announce(), "validates": can_validate(s.backend, s.model.kind)}
                                       for s in self.served] + enclave_models,
                               backends=list(dict.fromkeys(b.name for b in self.backends)),
                               hardware=self.hardware, signing_key=public_key_text(self.signing_key),
                               attestation=attestation)
        # Not a required protocol field: a label for dashboards, defaulting to the host name.
        frame["name"] = self.config.name or socket.gethostname()
        return frame

    async def _handshake(self, ws: ClientConnection) -> None:
        await ws.send(protocol.encode(self._hello()))
        frame = _parse(await asyncio.wait_for(ws.recv(), self.config.welcome_timeout))
        kind = frame.get("type") if frame else None
        if kind == "welcome":
            self.worker_id = str(frame.get("worker_id"))
            self.heartbeat_interval = _positive_number(frame.get("heartbeat_interval"),
                                                       DEFAULT_HEARTBEAT_INTERVAL)
            log.info("connected to %s as worker %s (heartbeat every %gs)",
                     self.url, self.worker_id, self.heartbeat_interval)
            return
        if kind == "error":
            log.error("node refused the hello: %s: %s", frame.get("code"), frame.get("message"))
            # The node closes right after an error; its close code says whether to retry.
            await asyncio.wait_for(ws.wait_closed(), self.config.welcome_timeout)
            self._raise_if_fatal(ws.close_code, ws.close_reason or str(frame.get("message") or ""))
            raise ConnectionError(f"hello refused: {frame.get('code')}")
        raise ConnectionError(f"expected welcome, got {kind!r}")

    async def _serve(self, ws: ClientConnection) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(ws))
        try:
            async for raw in ws:
                wire_log.debug("node -> agent: %s", raw)
                frame = _parse(raw)
                if frame is not None:
                    await self._dispatch(ws, frame)
        finally:
            heartbeat.cancel()
            await self._abandon_job()

    async def _heartbeat(self, ws: ClientConnection) -> None:
        frame = protocol.encode({"type": "heartbeat"})
        try:
            while True:
                await asyncio.sleep(self.heartbeat_interval)
                await ws.send(frame)
        except ConnectionClosed:
            return  # the receive loop sees the closure and handles it

    async def _abandon_job(self) -> None:
        """The link is gone: stop generating (the node has failed the job) and wait for it."""
        job = self._job
        if job is None:
            return
        job.cancel.set()
        await asyncio.gather(job.task, return_exceptions=True)

    # -- frames from the node ---------------------------------------------------------------

    async def _dispatch(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "job.assign" and frame.get("sealed") is not None and isinstance(frame.get("job_id"), str):
            await self._on_sealed_assign(ws, frame)
        elif kind == "job.assign":
            await self._on_assign(ws, frame)
        elif kind == "attest.request":
            await self._on_attest(ws, frame)
        elif kind == "embed.assign":
            await self._on_embed(ws, frame)
        elif kind == "validate.assign":
            await self._on_validate(ws, frame)
        elif kind == "job.cancel":
            self._on_cancel(frame)
        elif kind == "error":
            log.error("node error: %s: %s", frame.get("code"), frame.get("message"))
        elif kind != "heartbeat":
            log.debug("ignoring frame of type %r", kind)

    async def _on_assign(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        job_id = frame.get("job_id")
        if not isinstance(job_id, str):
            log.warning("ignoring job.assign without a job_id")
            return
        refusal, served, request = self._check(frame)
        if refusal is not None:
            await self._refuse(ws, job_id, refusal)
            return
        assert served is not None and request is not None
        await _send(ws, {"type": "job.accepted", "job_id": job_id})
        cancel = threading.Event()
        params = frame.get("params") or {}
        batched = frame.get("stream") is False  # absent (an older node): piece by piece
        task = asyncio.create_task(self._run_job(ws, job_id, served, request, params, cancel, batched))
        self._job = _Job(job_id, cancel, task)

    async def _on_validate(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        """Re-execute another worker's job and score its claimed output (worker/validation.py)."""
        job_id = frame.get("job_id")
        if not isinstance(job_id, str):
            log.warning("ignoring validate.assign without a job_id")
            return
        refusal, served, request = self._check(frame)
        if refusal is None and not isinstance(frame.get("output"), str):
            refusal = ("invalid_job", "output (the claimed answer) must be a string")
        if refusal is None and not can_validate(served.backend):
            refusal = ("unsupported", f"the {served.backend.name} backend cannot score outputs")
        if refusal is not None:
            await self._refuse(ws, job_id, refusal)
            return
        cancel = threading.Event()
        task = asyncio.create_task(self._run_validation(ws, job_id, served, request, frame, cancel))
        self._job = _Job(job_id, cancel, task)

    async def _run_validation(self, ws: ClientConnection, job_id: str, served: _Served, request: Request,
                              frame: dict[str, Any], cancel: threading.Event) -> None:
        try:
            result = await validation_result(served.backend, served.model.id, served.model.digest, request,
                                             frame.get("params") or {}, frame["output"], cancel)
            await _send(ws, {"type": "validate.done", "job_id": job_id, **result})
        except BackendError as exc:
            await _send(ws, {"type": "job.error", "job_id": job_id, "code": exc.code, "message": exc.message})
        except ConnectionClosed:
            log.warning("validation %s: connection lost", job_id)
        finally:
            cancel.set()
            if self._job is not None and self._job.id == job_id:
                self._job = None

    async def _send_frame(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        await _send(ws, frame)

    def _new_job(self, job_id: str, cancel: threading.Event, task: asyncio.Task[None], sealed: bool = False) -> None:
        self._job = _Job(job_id, cancel, task, sealed)

    async def _refuse(self, ws: ClientConnection, job_id: str, refusal: tuple[str, str]) -> None:
        code, message = refusal
        log.warning("job %s refused: %s", job_id, message)
        await _send(ws, {"type": "job.error", "job_id": job_id, "code": code, "message": message})

    def _find(self, frame: dict[str, Any], kind: str) -> _Served | None:
        """The served model with the job's digest; its id breaks a tie (one Ollama blob can be
        tagged twice)."""
        matches = [s for s in self.served
                   if s.model.kind == kind and s.model.digest == frame.get("model_digest")]
        named = [s for s in matches if s.model.id == frame.get("model")]
        return (named or matches or [None])[0]

    def _unavailable(self, kind: str) -> tuple[str, str]:
        served = ", ".join(f"{s.model.id} ({s.model.digest})" for s in self.served
                           if s.model.kind == kind) or f"no {kind} model"
        return "model_unavailable", f"this worker serves {served}"

    def _check(self, frame: dict[str, Any]
               ) -> tuple[tuple[str, str] | None, _Served | None, Request | None]:
        """(refusal code and message, or None; the model to run; what to run)."""
        if self._job is not None:
            return ("busy", f"worker is running job {self._job.id}"), None, None
        served = self._find(frame, "chat")
        if served is None:
            return self._unavailable("chat"), None, None
        messages, prompt, params = frame.get("messages"), frame.get("prompt"), frame.get("params")
        if not isinstance(params, (dict, type(None))):
            return ("invalid_job", "params must be an object"), None, None
        if prompt is not None:
            if not isinstance(prompt, str):
                return ("invalid_job", "prompt must be a string"), None, None
            return None, served, Request(prompt=prompt)
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return ("invalid_job", "messages must be a list of objects"), None, None
        try:
            format_chat(messages)  # what the node counts tokens with must accept them too
        except (TypeError, AttributeError) as exc:
            return ("invalid_job", f"messages could not be formatted: {exc}"), None, None
        return None, served, Request(messages=messages)

    def _on_cancel(self, frame: dict[str, Any]) -> None:
        job = self._job
        if job is not None and job.id == frame.get("job_id"):
            log.info("job %s: cancel requested (%s)", job.id, frame.get("reason"))
            job.cancel.set()
            if job.sealed:
                self._cancel_sealed(job.id)
        else:
            log.debug("cancel for job %r, which is not running", frame.get("job_id"))

    # -- running a job ----------------------------------------------------------------------

    async def _run_job(self, ws: ClientConnection, job_id: str, served: _Served, request: Request,
                       params: dict[str, Any], cancel: threading.Event, batched: bool = False) -> None:
        try:
            await self._execute(ws, job_id, served, request, params, cancel, batched)
        except ConnectionClosed:
            log.warning("job %s: connection lost, generation stopped", job_id)
        finally:
            cancel.set()  # whatever happened, the generation thread must not outlive the job
            if self._job is not None and self._job.id == job_id:
                self._job = None

    async def _execute(self, ws: ClientConnection, job_id: str, served: _Served, request: Request,
                       params: dict[str, Any], cancel: threading.Event, batched: bool = False) -> None:
        log.info("job %s: started on %s (%s, max_tokens=%s)", job_id, served.model.id,
                 "raw prompt" if request.prompt is not None else "chat", params.get("max_tokens"))
        started = time.monotonic()
        pieces: list[str] = []
        try:
            finish = await self._stream(ws, job_id, served, request, params, cancel, pieces, batched)
        except BackendError as exc:
            log.warning("job %s: %s: %s", job_id, exc.code, exc.message)
            await _send(ws, {"type": "job.error", "job_id": job_id, "code": exc.code,
                             "message": exc.message})
            return
        except ConnectionClosed:
            raise
        except Exception as exc:
            log.exception("job %s: backend failure", job_id)
            await _send(ws, {"type": "job.error", "job_id": job_id, "code": "backend_error",
                             "message": f"{type(exc).__name__}: {exc}"})
            return
        elapsed = time.monotonic() - started
        # The commitment over what ran and what came out, signed: the node checks it against the
        # text it relayed, and a proof carries it (worker/commitment.py).
        commitment = commitment_hash(commitment_inputs(
            model_id=served.model.id, model_digest=served.model.digest, seed=params.get("seed"), params=params,
            prompt=job_prompt(messages=request.messages, prompt=request.prompt)[0], output="".join(pieces)))
        await _send(ws, {"type": "job.done", "job_id": job_id, "finish_reason": finish.reason,
                         "model_digest": served.model.digest,
                         "usage": {"completion_tokens": finish.completion_tokens},
                         "commitment": commitment, "signature": commitment_sign(self.signing_key, commitment)})
        rate = finish.completion_tokens / elapsed if elapsed > 0 else 0.0
        log.info("job %s: %s, %d tokens in %.2fs (%.1f tok/s)",
                 job_id, finish.reason, finish.completion_tokens, elapsed, rate)

    async def _stream(self, ws: ClientConnection, job_id: str, served: _Served, request: Request,
                      params: dict[str, Any], cancel: threading.Event, pieces: list[str],
                      batched: bool = False) -> Finish:
        """Run the blocking generator in a thread and relay its pieces as job.delta frames
        (collected in `pieces`): one frame a piece, or when `batched` the first piece and then
        batches (BATCH_SECONDS, BATCH_CHARS)."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def post(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:
                cancel.set()  # the event loop is gone (shutdown): nobody is listening

        def produce() -> None:
            try:
                for piece in served.backend.generate(served.model.id, request, params, cancel):
                    post(piece)
            except BaseException as exc:  # handed to the event loop, which reports it
                post(exc)

        threading.Thread(target=produce, name=f"job-{job_id}", daemon=True).start()
        seq = 0
        batch: list[str] = []
        batch_chars, sent_at = 0, time.monotonic()

        async def flush() -> None:
            nonlocal seq, batch, batch_chars, sent_at
            if batch:
                text = "".join(batch)
                await _send(ws, {"type": "job.delta", "job_id": job_id, "seq": seq, "text": text})
                pieces.append(text)
                seq += 1
            batch, batch_chars, sent_at = [], 0, time.monotonic()

        while True:
            if batch:
                try:
                    item = await asyncio.wait_for(queue.get(), max(0.0, sent_at + BATCH_SECONDS - time.monotonic()))
                except TimeoutError:
                    await flush()
                    continue
            else:
                item = await queue.get()
            if isinstance(item, Finish):
                await flush()
                return item
            if isinstance(item, BaseException):
                raise item
            batch.append(item)
            batch_chars += len(item)
            if not batched or seq == 0 or batch_chars >= BATCH_CHARS or time.monotonic() - sent_at >= BATCH_SECONDS:
                await flush()

async def _send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    text = protocol.encode(frame)
    wire_log.debug("agent -> node: %s", text)
    await ws.send(text)


def _positive_number(value: Any, default: float) -> float:
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return float(value) if valid else default


def _parse(raw: str | bytes) -> dict[str, Any] | None:
    """A node frame, or None (logged) when it is not a JSON object with a type."""
    try:
        frame = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        log.warning("ignoring a frame that is not JSON")
        return None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        log.warning("ignoring a frame that is not an object with a type")
        return None
    return frame
