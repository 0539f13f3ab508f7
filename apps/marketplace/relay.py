"""Routes a job to a worker over the channel layer and relays its frames back, no DB per token.

The relay listens on its own channel, a member of the group `job.<uuid>`; the agent's consumer
forwards the worker's frames to that group. The database is written when the job starts on a
worker, and once at the end (complete or fail).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from apps.workers.models import CatalogueModel
from apps.workers.selectors import tier_has_workers, workers_eligible
from apps.workers.services import worker_claim, worker_release
from worker import protocol

from .models import Job
from .services import job_complete, job_fail, job_start

logger = logging.getLogger(__name__)
ACCEPT_TIMEOUT = 10.0
ROUTE_POLL_SECONDS = 0.2


class JobFailed(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def job_group(job_id) -> str:
    return f"job.{job_id}"


class JobRelay:
    def __init__(self, *, job: Job, entry: CatalogueModel):
        self.job, self.entry = job, entry
        self.layer = get_channel_layer()
        self.channel = ""
        self.worker_id = None
        self.tried: set = set()
        self.text_parts: list[str] = []
        self.settled = False

    async def start(self) -> None:
        """Join the job's group and get the job accepted by a worker, or refund and raise JobFailed."""
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(job_group(self.job.id), self.channel)
        await self._route(deadline=time.monotonic() + settings.PEER_QUEUE_TIMEOUT)

    async def deltas(self) -> AsyncIterator[str]:
        """Yield text as the worker produces it; on completion self.job is the settled job."""
        deadline = time.monotonic() + settings.PEER_JOB_TIMEOUT
        while True:
            frame = await self._next_frame(deadline)
            kind = frame["type"]
            if kind == "job.delta":
                self.text_parts.append(frame["text"])
                yield frame["text"]
            elif kind == "job.done":
                self.job = await database_sync_to_async(job_complete)(
                    job_id=self.job.id, output_text="".join(self.text_parts),
                    finish_reason=frame["finish_reason"], model_digest=frame["model_digest"])
                self.settled = True
                return
            elif kind == "job.error":
                await self._on_worker_error(frame)

    async def abort(self, reason: str) -> None:
        """The client went away: cancel on the worker and charge only what was delivered."""
        if self.settled:
            return
        if self.worker_id is not None:
            await self._send_to_worker(protocol.job_cancel(job_id=str(self.job.id), reason=reason))
        if self.text_parts:
            self.job = await database_sync_to_async(job_complete)(
                job_id=self.job.id, output_text="".join(self.text_parts), finish_reason="cancelled",
                model_digest=self.job.model_digest)
        else:
            self.job = await database_sync_to_async(job_fail)(job_id=self.job.id, code="client_closed",
                                                               message=reason)
        self.settled = True

    async def close(self) -> None:
        if self.channel:
            await self.layer.group_discard(job_group(self.job.id), self.channel)

    async def _route(self, *, deadline: float) -> None:
        if not await database_sync_to_async(tier_has_workers)(tier=self.job.tier):
            await self._fail(503, "no_workers", f"No worker on this node serves the {self.job.tier} tier.")
        while True:
            if await self._try_assign():
                return
            if time.monotonic() >= deadline:
                await self._fail(503, "no_worker_available",
                                 f"No worker for {self.entry.name} ({self.job.tier}) became free in "
                                 f"{settings.PEER_QUEUE_TIMEOUT:.0f}s. Your credits were not charged.")
            await asyncio.sleep(ROUTE_POLL_SECONDS)

    async def _try_assign(self) -> bool:
        candidates = await database_sync_to_async(workers_eligible)(entry=self.entry, tier=self.job.tier)
        for worker, model in candidates:
            if worker.id in self.tried or not await database_sync_to_async(worker_claim)(
                    worker_id=worker.id, job_id=self.job.id):
                continue
            self.tried.add(worker.id)
            self.worker_id, self.worker_channel = worker.id, worker.channel_name
            await database_sync_to_async(job_start)(job_id=self.job.id, worker_id=worker.id,
                                                    model_digest=model["digest"])
            await self._send_to_worker(protocol.job_assign(
                job_id=str(self.job.id), model=model["id"], model_digest=model["digest"],
                messages=self.job.messages if self.job.is_chat else None, prompt=self.job.raw_prompt,
                params=self.job.params))
            try:
                frame = await self._next_frame(time.monotonic() + ACCEPT_TIMEOUT, route_on_error=False)
            except TimeoutError:
                logger.warning("worker %s did not accept job %s", worker.id, self.job.id)
                await database_sync_to_async(worker_release)(worker_id=worker.id, job_id=self.job.id)
                continue
            if frame["type"] == "job.accepted":
                return True
            # job.error before acceptance (e.g. busy): the worker's consumer already released it.
            logger.info("worker %s refused job %s: %s", worker.id, self.job.id, frame.get("code"))
        return False

    async def _next_frame(self, deadline: float, route_on_error: bool = True) -> dict:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if not route_on_error:
                    raise TimeoutError
                await self._fail(504, "job_timeout", "The worker did not finish in time.")
            try:
                message = await asyncio.wait_for(self.layer.receive(self.channel), timeout=remaining)
            except TimeoutError:
                continue
            # Frames from a worker this job already left (after a failover) are stale.
            if message.get("worker_id") == str(self.worker_id):
                return message["frame"]

    async def _on_worker_error(self, frame: dict) -> None:
        if not self.text_parts:
            # Nothing reached the client yet: move the job to the next worker transparently.
            logger.info("job %s failing over after %s", self.job.id, frame.get("code"))
            await self._route(deadline=time.monotonic() + settings.PEER_QUEUE_TIMEOUT)
            return
        await self._fail(502, "worker_failed", f"The worker failed mid-answer ({frame.get('code')}): "
                         "the whole price was refunded.")

    async def _send_to_worker(self, frame: dict) -> None:
        await self.layer.send(self.worker_channel, {"type": "agent.send", "frame": frame})

    async def _fail(self, status: int, code: str, message: str):
        if self.worker_id is not None:  # stop a worker that may still be generating
            await self._send_to_worker(protocol.job_cancel(job_id=str(self.job.id), reason=code))
        self.job = await database_sync_to_async(job_fail)(job_id=self.job.id, code=code, message=message)
        self.settled = True
        raise JobFailed(status, code, message)
