"""The agent's host side of the confidential tier (docs/confidential.md §4): it relays
attestation challenges and sealed jobs to the enclave process (worker/enclave/) and the enclave's
sealed pieces back to the node. The host never holds the enclave's private key, so everything it
handles for these jobs is ciphertext: a sealed request in, sealed pieces and a signature out.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from worker import protocol
from worker.enclave.runtime import EnclaveError

log = logging.getLogger("worker.agent")


class SealedJobs:
    """Mixed into worker.agent.Agent: needs `enclave` (an EnclaveProcess or None), `_job`,
    `_send_frame`, `_refuse` and `_new_job`."""

    enclave: Any = None

    def _background(self, awaitable) -> None:
        """Run `awaitable` on its own, holding a reference: the event loop keeps only weak ones,
        and a task nobody holds may be collected before it runs to the end."""
        tasks = self.__dict__.setdefault("_background_tasks", set())
        task = asyncio.ensure_future(awaitable)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def enclave_announcement(self) -> tuple[list[dict], dict | None]:
        """The enclave's models for the hello (each marked confidential) and its attestation
        summary, or ([], None) without an enclave."""
        if self.enclave is None:
            return [], None
        models = [{**model, "confidential": True, "validates": False} for model in self.enclave.models]
        return models, {"kind": self.enclave.kind, "enclave_key": self.enclave.enclave_key,
                        "signing_key": self.enclave.signing_key,
                        "code_measurement": self.enclave.code_measurement}

    async def _on_attest(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        """Answer in a task: evidence takes the enclave a moment and jobs must not wait on it."""
        request_id = frame.get("request_id")
        if not isinstance(request_id, str):
            log.warning("ignoring attest.request without a request_id")
            return
        self._background(self._attest(ws, request_id, frame.get("nonce"), frame.get("model_digest")))

    async def _attest(self, ws: ClientConnection, request_id: str, nonce: Any, model_digest: Any) -> None:
        if self.enclave is None:
            answer = {"type": "attest.error", "request_id": request_id, "code": "no_enclave",
                      "message": "this agent runs no enclave"}
        else:
            try:
                evidence = await self.enclave.evidence(nonce, model_digest)
                answer = {"type": "attest.evidence", "request_id": request_id, "evidence": evidence}
            except EnclaveError as exc:
                answer = {"type": "attest.error", "request_id": request_id, "code": exc.code,
                          "message": exc.message}
        try:
            await self._send_frame(ws, answer)
        except ConnectionClosed:
            log.warning("attestation %s: connection lost before the answer was sent", request_id)

    async def _on_sealed_assign(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        job_id = frame["job_id"]
        sealed, params = frame.get("sealed"), frame.get("params") or {}
        refusal = None
        if self.enclave is None:
            refusal = ("unsupported", "this agent runs no enclave: it cannot open sealed requests")
        elif self._job is not None:
            refusal = ("busy", f"worker is running job {self._job.id}")
        elif not isinstance(sealed, dict) or sealed.get("enclave_key") != self.enclave.enclave_key:
            # Sealed to another enclave (ours restarted with a new key): it cannot open here.
            refusal = ("enclave_key_mismatch", "the request is sealed to another enclave's key")
        elif not any(m.get("digest") == frame.get("model_digest") for m in self.enclave.models):
            refusal = ("model_unavailable", f"the enclave does not serve {frame.get('model_digest')}")
        elif not isinstance(params, dict):
            refusal = ("invalid_job", "params must be an object")
        if refusal is not None:
            await self._refuse(ws, job_id, refusal)
            return
        await self._send_frame(ws, {"type": "job.accepted", "job_id": job_id})
        cancel = threading.Event()
        request = {"request": sealed.get("request"), "reply_key": sealed.get("reply_key")}
        task = asyncio.create_task(self._run_sealed(ws, job_id, frame["model_digest"], request, params, cancel))
        self._new_job(job_id, cancel, task, sealed=True)

    async def _run_sealed(self, ws: ClientConnection, job_id: str, model_digest: str, request: dict,
                          params: dict, cancel: threading.Event) -> None:
        seq = 0
        try:
            async for event in self.enclave.run(job_id, model_digest, request, params):
                if event["op"] == "chunk":
                    await self._send_frame(ws, {"type": "job.delta", "job_id": job_id, "seq": seq,
                                                "sealed": event["sealed"]})
                    seq += 1
                elif event["op"] == "done":
                    await self._send_frame(ws, {"type": "job.done", "job_id": job_id,
                                                "finish_reason": event["finish_reason"],
                                                "model_digest": model_digest, "usage": event["usage"],
                                                "enclave_signature": event["enclave_signature"]})
                    log.info("job %s: confidential, %s pieces sealed, %s", job_id, seq, event["finish_reason"])
        except EnclaveError as exc:
            log.warning("job %s: enclave: %s: %s", job_id, exc.code, exc.message)
            try:
                await self._send_frame(ws, {"type": "job.error", "job_id": job_id, "code": exc.code,
                                            "message": exc.message})
            except ConnectionClosed:
                pass
        except ConnectionClosed:
            log.warning("job %s: connection lost, the enclave stops", job_id)
        finally:
            cancel.set()
            if self._job is not None and self._job.id == job_id:
                self._job = None

    def _cancel_sealed(self, job_id: str) -> None:
        if self.enclave is not None:
            self._background(self.enclave.cancel(job_id))
