"""The agent's embedding jobs (embed.assign -> embed.done | job.error): one vector per input,
computed in a thread by an EmbeddingBackend; no job.accepted and no job.delta (worker/protocol.py).
Each embed.done carries the agent's signed commitment over the chunk (worker/embedding_commitment.py).
A validator re-executing another worker's embedding job gets the same frames and answers alike.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from worker import protocol
from worker.backends import BackendError
from worker.commitment import commitment_sign
from worker.embedding_commitment import chunk_commitment

log = logging.getLogger("worker.agent")


class EmbeddingJobs:
    """Mixed into worker.agent.Agent: needs `_job`, `_find`, `_unavailable`, `_refuse`,
    `_send_frame`, `_new_job` and `signing_key`."""

    async def _on_embed(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        job_id = frame.get("job_id")
        if not isinstance(job_id, str):
            log.warning("ignoring embed.assign without a job_id")
            return
        refusal, served = self._check_embed(frame)
        if refusal is not None:
            await self._refuse(ws, job_id, refusal)
            return
        assert served is not None
        cancel = threading.Event()
        task = asyncio.create_task(self._run_embed(ws, job_id, served, frame["input"], cancel))
        self._new_job(job_id, cancel, task)

    def _check_embed(self, frame: dict[str, Any]) -> tuple[tuple[str, str] | None, Any | None]:
        if self._job is not None:
            return ("busy", f"worker is running job {self._job.id}"), None
        served = self._find(frame, "embedding")
        if served is None:
            return self._unavailable("embedding"), None
        inputs = frame.get("input")
        if not isinstance(inputs, list) or not inputs or \
                not all(isinstance(text, str) for text in inputs):
            return ("invalid_job", "input must be a non-empty list of strings"), None
        if len(inputs) > protocol.MAX_EMBED_INPUTS:
            return ("invalid_job", f"at most {protocol.MAX_EMBED_INPUTS} inputs per "
                                   "embed.assign"), None
        return None, served

    async def _run_embed(self, ws: ClientConnection, job_id: str, served: Any,
                         inputs: list[str], cancel: threading.Event) -> None:
        started = time.monotonic()
        try:
            frame = await self._embed(job_id, served, inputs, cancel)
            await self._send_frame(ws, frame)
        except ConnectionClosed:
            log.warning("job %s: connection lost before the embeddings were sent", job_id)
            return
        finally:
            cancel.set()
            if self._job is not None and self._job.id == job_id:
                self._job = None
        if frame["type"] == "embed.done":
            log.info("job %s: %d embeddings in %.3fs", job_id, len(inputs),
                     time.monotonic() - started)

    async def _embed(self, job_id: str, served: Any, inputs: list[str],
                     cancel: threading.Event) -> dict[str, Any]:
        """embed.done, or the job.error to send instead. The model runs in a thread."""
        try:
            result = await asyncio.to_thread(served.backend.embed, served.model.id, inputs, cancel)
        except BackendError as exc:
            log.warning("job %s: %s: %s", job_id, exc.code, exc.message)
            return {"type": "job.error", "job_id": job_id, "code": exc.code,
                    "message": exc.message}
        except Exception as exc:
            log.exception("job %s: embedding backend failure", job_id)
            return {"type": "job.error", "job_id": job_id, "code": "backend_error",
                    "message": f"{type(exc).__name__}: {exc}"}
        _, commitment = chunk_commitment(model_id=served.model.id, model_digest=served.model.digest,
                                         texts=inputs, vectors=result.data)
        return protocol.embed_done(job_id=job_id, model_digest=served.model.digest,
                                   data=result.data, prompt_tokens=result.prompt_tokens,
                                   commitment=commitment,
                                   signature=commitment_sign(self.signing_key, commitment))
