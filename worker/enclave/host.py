"""The agent's handle on the enclave process: start it, ask it for evidence, run sealed jobs.

The host side of the JSON-lines protocol in `worker/enclave/__main__.py`, for asyncio. One reader
task takes every line the enclave writes and hands it to whoever waits for it: an evidence
request by its "id", a job by its "job_id". If the process dies, everything waiting raises
EnclaveError("enclave_lost"): a job cannot finish without the enclave that holds its keys.

What crosses the pipe is what the host may see: envelopes, counts, signatures, evidence. The
`on_line` hook sees every raw line read, so tests can check that no plaintext is among them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from worker.enclave.runtime import EnclaveError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
LINE_LIMIT = 8 * 1024 * 1024  # one chunk line is small; a runaway line must not eat memory
EVIDENCE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
_LOST = object()  # put in a job's queue when the process is gone


class EnclaveStartError(Exception):
    """The enclave process did not come up: it failed to load, exited, or took too long."""


class EnclaveProcess:
    """A running `python -m worker.enclave`. Build it with `await EnclaveProcess.start(...)`."""

    def __init__(self, process: asyncio.subprocess.Process, ready: dict[str, Any],
                 on_line: Callable[[bytes], None] | None = None) -> None:
        self.process = process
        self.ready = ready
        self.models: list[dict[str, Any]] = list(ready.get("models") or [])
        self.kind: str = ready["kind"]
        self.enclave_key: str = ready["enclave_key"]
        self.signing_key: str = ready["signing_key"]
        self.code_measurement: str = ready["code_measurement"]
        self._on_line = on_line
        self._ids = itertools.count(1)
        self._evidence_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._jobs: dict[str, asyncio.Queue[Any]] = {}
        self._lost: str | None = None
        self._reader = asyncio.create_task(self._read_lines(), name="enclave-reader")

    @classmethod
    async def start(cls, settings: dict[str, Any], *, python: str = sys.executable,
                    env: dict[str, str] | None = None, startup_timeout: float = 120.0,
                    on_line: Callable[[bytes], None] | None = None) -> EnclaveProcess:
        """Spawn the enclave with `settings` (see __main__.py) and wait for its ready line.
        `env` defaults to this process's environment. Raises EnclaveStartError."""
        child_env = dict(os.environ if env is None else env)
        child_env["PEER_ENCLAVE_SETTINGS"] = json.dumps(settings, default=str)
        # cwd is the repository root so that `-m worker.enclave` imports this very checkout.
        process = await asyncio.create_subprocess_exec(
            python, "-m", "worker.enclave", cwd=str(REPO_ROOT), env=child_env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT)
        try:
            ready = await asyncio.wait_for(_ready_line(process, on_line), startup_timeout)
        except asyncio.TimeoutError:
            await _kill(process)
            raise EnclaveStartError(f"the enclave was not ready within {startup_timeout:g}s") from None
        except BaseException:
            await _kill(process)
            raise
        log.info("enclave ready (%s, %d models, pid %s)", ready.get("kind"),
                 len(ready.get("models") or []), process.pid)
        return cls(process, ready, on_line)

    async def evidence(self, nonce_b64: str, model_digest: str) -> dict[str, Any]:
        """Fresh evidence over `nonce_b64` for `model_digest`; raises EnclaveError."""
        request_id = str(next(self._ids))
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._evidence_waiters[request_id] = waiter
        try:
            await self._send({"op": "evidence", "id": request_id, "nonce": nonce_b64,
                              "model_digest": model_digest})
            answer = await asyncio.wait_for(waiter, EVIDENCE_TIMEOUT)
        except asyncio.TimeoutError:
            raise EnclaveError("enclave_timeout",
                               f"no evidence within {EVIDENCE_TIMEOUT:g}s") from None
        finally:
            self._evidence_waiters.pop(request_id, None)
        if answer.get("op") == "evidence":
            return answer["evidence"]
        raise EnclaveError(str(answer.get("code")), str(answer.get("message")))

    async def run(self, job_id: str, model_digest: str, sealed: dict[str, Any],
                  params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The job's "chunk" messages, then its "done"; raises EnclaveError on a job_error.
        The job starts at the first iteration; leaving the loop early cancels it."""
        if job_id in self._jobs:
            raise EnclaveError("busy", f"job {job_id} is already running here")
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._jobs[job_id] = queue
        finished = False
        try:
            await self._send({"op": "run", "id": str(next(self._ids)), "job_id": job_id,
                              "model_digest": model_digest, "sealed": sealed, "params": params})
            while True:
                message = await queue.get()
                if message is _LOST:
                    raise EnclaveError("enclave_lost", self._lost or "the enclave process is gone")
                if message["op"] == "job_error":
                    finished = True
                    raise EnclaveError(str(message.get("code")), str(message.get("message")))
                finished = message["op"] == "done"
                yield message
                if finished:
                    return
        finally:
            self._jobs.pop(job_id, None)
            if not finished and self._lost is None:
                # The consumer left early (its own cancel, an error): the enclave must not go on
                # generating for nobody. No await here: this also runs when the loop closes it.
                try:
                    self._send_nowait({"op": "cancel", "job_id": job_id})
                except EnclaveError:
                    pass

    async def cancel(self, job_id: str) -> None:
        """Ask the enclave to stop the job; it still ends with a "done" (finish "cancelled").
        A no-op once the enclave is gone: its jobs have ended with enclave_lost already."""
        if self._lost is not None:
            return
        try:
            await self._send({"op": "cancel", "job_id": job_id})
        except EnclaveError:
            pass

    async def close(self) -> None:
        """Close stdin (the enclave exits at its end), wait, and kill after CLOSE_TIMEOUT."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("the enclave did not exit within %gs; killing it", CLOSE_TIMEOUT)
            await _kill(self.process)
        self._mark_lost("the enclave process was closed")
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def _send(self, message: dict[str, Any]) -> None:
        self._send_nowait(message)
        try:
            await self.process.stdin.drain()
        except (ConnectionError, AttributeError):
            self._mark_lost("the enclave's stdin is closed")
            raise EnclaveError("enclave_lost", self._lost or "the enclave process is gone") from None

    def _send_nowait(self, message: dict[str, Any]) -> None:
        if self._lost is not None:
            raise EnclaveError("enclave_lost", self._lost)
        stdin = self.process.stdin
        if stdin is None or stdin.is_closing():
            self._mark_lost("the enclave's stdin is closed")
            raise EnclaveError("enclave_lost", self._lost or "the enclave process is gone")
        stdin.write((json.dumps(message, ensure_ascii=True) + "\n").encode("ascii"))

    async def _read_lines(self) -> None:
        reason = "the enclave process exited"
        try:
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    break
                if self._on_line is not None:
                    self._on_line(line)
                self._dispatch(line)
        except ValueError:  # a line over LINE_LIMIT: the protocol is broken, so is the enclave
            reason = "the enclave wrote a line over the limit"
            if self.process.returncode is None:
                self.process.kill()
        except asyncio.CancelledError:
            reason = "the enclave process was closed"
            raise
        finally:
            code = self.process.returncode
            self._mark_lost(reason if code is None else f"{reason} (status {code})")

    def _dispatch(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            op = message["op"]
        except (ValueError, KeyError, TypeError):
            log.warning("the enclave wrote a line that is not a message; ignored")
            return
        if op in ("evidence", "error") and message.get("id") is not None:
            waiter = self._evidence_waiters.get(str(message["id"]))
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
                return
        elif op in ("chunk", "done", "job_error"):
            queue = self._jobs.get(message.get("job_id"))
            if queue is not None:
                queue.put_nowait(message)
                return
        log.debug("enclave message %s for nobody waiting; dropped", op)

    def _mark_lost(self, reason: str) -> None:
        if self._lost is not None:
            return
        self._lost = reason
        for waiter in self._evidence_waiters.values():
            if not waiter.done():
                waiter.set_exception(EnclaveError("enclave_lost", reason))
        for queue in self._jobs.values():
            queue.put_nowait(_LOST)


async def _ready_line(process: asyncio.subprocess.Process,
                      on_line: Callable[[bytes], None] | None) -> dict[str, Any]:
    while True:
        line = await process.stdout.readline()
        if not line:
            code = await process.wait()
            raise EnclaveStartError(f"the enclave exited before it was ready (status {code})")
        if on_line is not None:
            on_line(line)
        try:
            message = json.loads(line)
        except ValueError:
            continue  # not ours; the real stdout carries protocol lines only, but be lenient
        if isinstance(message, dict) and message.get("op") == "ready":
            return message
        if isinstance(message, dict) and message.get("op") == "failed":
            await process.wait()
            raise EnclaveStartError(str(message.get("message")))


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        try:
            process.kill()
        except ProcessLookupError:
            pass
    await process.wait()
