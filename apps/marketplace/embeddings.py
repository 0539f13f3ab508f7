"""Serves an embedding job: one worker, chosen as chat's are, embeds every input in chunks.

The relay claims the best idle worker holding the model (the same ranking as chat: routing.py
over candidates.py, with the client's peer_route), then sends the inputs in order as
embed.assign frames of at most protocol.MAX_EMBED_INPUTS, one at a time, each answered by
embed.done or job.error on the job's group `job.<uuid>`. The worker stays claimed across its
chunks (its consumer releases it on a job.error, the relay at the end).

A worker that errors, drops, or sends vectors that are not one finite vector of the model's
length per input is left (and, unless it was merely busy, its reputation falls); so is, on the
verified tier, one whose chunk does not carry its valid signature over the node's own chunk
commitment (worker/embedding_commitment.py; a failed verification's reputation cut). The next
worker then embeds every input again, so that one worker stands behind the whole answer, its
commitment and its pay. The client sees a failover only as latency. No worker in time: 503,
the whole hold refunded; past PEER_JOB_TIMEOUT: 504, refunded; the channel layer failing: 503,
refunded; the client leaving: the worker is told to stop, and the job refunded.
"""

import asyncio
import logging
import time

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from apps.workers.metrics import worker_completion_record, worker_outcome_record
from apps.workers.models import CatalogueModel, Worker
from apps.workers.roster import tier_has_workers
from apps.workers.routing import RoutePreferences
from apps.workers.selectors import worker_job_state
from apps.workers.services import worker_claim_best, worker_release
from apps.workers.vacancies import vacancy_announce, vacancy_wait
from worker import protocol

from .embedding_proofs import ChunkRejected, chunk_proof
from .models import Job
from .relay import (LAST_FRAME_WAIT, LAYER_ERRORS, ROUTE_POLL_SECONDS, SILENCE_CHECK_SECONDS, JobFailed, JobMailbox,
                    job_group)
from .services import embed_job_complete, job_fail, job_start
from .vectors import vectors_problem

logger = logging.getLogger(__name__)
CHUNK = protocol.MAX_EMBED_INPUTS
# How long a worker left mid-chunk gets to answer its job.cancel before it is released: freed
# while still embedding, it would refuse its next job as busy. The agent checks between batches.
CANCEL_GRACE = 5.0


class _WorkerFault(Exception):
    """The claimed worker failed this job; the relay moves on to another."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


db = database_sync_to_async  # every ORM call runs in asgiref's thread


class EmbedRelay(JobMailbox):
    def __init__(self, *, job: Job, entry: CatalogueModel, route: RoutePreferences | None = None):
        self.job, self.entry, self.route = job, entry, route
        self.layer = get_channel_layer()
        self.channel = ""
        self.worker_id = self.worker_channel = self.model = None
        self.worker_key = ""  # the claimed worker's announced Ed25519 key: it signs each chunk
        self.worker_working = False  # a chunk was sent to the claimed worker and not yet answered
        self.tried: set = set()
        self._receiving: asyncio.Future | None = None

    async def run(self) -> list[list[float]]:
        """Every input's vector, in order, with self.job settled (captured). Raises JobFailed with
        the job refunded; a cancelled request (the client left) is refunded too."""
        try:
            self.channel = await self.layer.new_channel()
            await self.layer.group_add(job_group(self.job.id), self.channel)
            return await self._serve()
        except LAYER_ERRORS as exc:
            logger.warning("embedding job %s: channel layer failed: %s", self.job.id, exc)
            failed = JobFailed(503, "node_unavailable", "The node's link to the worker failed (its message "
                               "bus was unavailable); the whole price was refunded. Retry shortly.")
            await self._refund(failed.code, failed.message)
            raise failed from None
        except JobFailed as exc:
            await self._refund(exc.code, exc.message)
            raise
        except asyncio.CancelledError:
            await self._refund("client_closed", "The client closed the connection.")
            raise
        finally:
            await self._let_go()

    async def _serve(self) -> list[list[float]]:
        if not await db(tier_has_workers)(entry=self.entry, tier=self.job.tier):
            raise JobFailed(503, "no_workers", f"No worker on this node serves the {self.job.tier} tier.")
        deadline = time.monotonic() + settings.PEER_JOB_TIMEOUT
        while True:
            await self._claim(deadline=min(deadline, time.monotonic() + settings.PEER_QUEUE_TIMEOUT))
            started = time.monotonic()
            try:
                vectors, chunks, first_chunk = await self._embed_all(deadline)
            except _WorkerFault as fault:
                await self._leave_worker(fault)
                continue
            self.job = await db(embed_job_complete)(job_id=self.job.id, vectors=vectors,
                                                    model_digest=self.model["digest"], chunks=chunks,
                                                    public_key=self.worker_key)
            await db(self._record_success)(started, first_chunk)
            return vectors

    async def _claim(self, *, deadline: float) -> None:
        """Claim the best idle eligible worker not tried yet, polling until `deadline`."""
        since = time.monotonic()  # its place among the relays waiting for a free worker
        while True:
            claimed = await db(worker_claim_best)(entry=self.entry, tier=self.job.tier, route=self.route,
                                                  price_ceiling=self.job.price_ceiling, job_id=self.job.id,
                                                  exclude=self.tried)
            if claimed is not None:
                worker_id, channel, model, price = claimed
                self.tried.add(str(worker_id))
                self.worker_id, self.worker_channel, self.model = worker_id, channel, model
                self.worker_key = await db(_signing_key)(worker_id)
                if not await db(job_start)(job_id=self.job.id, worker_id=worker_id,
                                           model_digest=model["digest"], price_per_token=price):
                    raise JobFailed(504, "job_timeout", "The job passed its deadline before it ran.")
                return
            if time.monotonic() >= deadline:
                raise JobFailed(503, "no_worker_available",
                                f"No worker for {self.entry.name} ({self.job.tier}) became free in time. "
                                "Your credits were not charged.")
            await vacancy_wait(ROUTE_POLL_SECONDS, since=since)

    async def _embed_all(self, deadline: float) -> tuple[list[list[float]], list[dict], float]:
        """The claimed worker's vectors for every input, each chunk's proof (embedding_proofs.py),
        and the seconds its first chunk took."""
        inputs, vectors, chunks = self.job.inputs, [], []
        first_chunk = None
        for start in range(0, len(inputs), CHUNK):
            chunk = inputs[start:start + CHUNK]
            sent = time.monotonic()
            self.worker_working = True
            await self._send_to_worker(protocol.embed_assign(
                job_id=str(self.job.id), model=self.model["id"], model_digest=self.model["digest"], input=chunk))
            try:
                frame = await self._answer(deadline)
            except TimeoutError:
                await db(worker_outcome_record)(worker_id=self.worker_id, outcome="failed")
                raise JobFailed(504, "job_timeout", "The worker did not finish in time.") from None
            except _WorkerFault:
                self.worker_working = False  # it went offline: there is nothing left to stop
                raise
            self.worker_working = False
            if frame["type"] == "job.error":
                raise _WorkerFault(str(frame.get("code")), str(frame.get("message")))
            if frame["model_digest"] != self.model["digest"]:
                raise _WorkerFault("wrong_model", f"answered with {frame['model_digest']}")
            problem = vectors_problem(frame["data"], count=len(chunk),
                                      dimensions=self.entry.dimensions or (len(vectors[0]) if vectors else None))
            if problem:
                raise _WorkerFault("bad_vectors", problem)
            try:
                chunks.append(chunk_proof(frame, texts=chunk, model_id=self.model["id"],
                                          public_key=self.worker_key, required=self.job.tier == "verified"))
            except ChunkRejected as rejected:
                raise _WorkerFault("commitment_rejected", str(rejected)) from None
            vectors.extend(frame["data"])
            first_chunk = first_chunk if first_chunk is not None else time.monotonic() - sent
        return vectors, chunks, first_chunk

    async def _answer(self, deadline: float) -> dict:
        """The claimed worker's embed.done or job.error; TimeoutError at the deadline, and a
        _WorkerFault when the worker went offline without word of it reaching this relay."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            try:
                message = await self._receive(min(remaining, SILENCE_CHECK_SECONDS))
            except TimeoutError:
                state = await db(worker_job_state)(worker_id=self.worker_id, job_id=self.job.id,
                                                   silence_seconds=settings.PEER_WORKER_SILENCE_LIMIT)
                if state == "holds":
                    continue
                if state == "silent":
                    raise _WorkerFault("worker_silent", "no word from the worker") from None
                try:  # its consumer sends the last frame before letting go: one short wait for it
                    message = await self._receive(LAST_FRAME_WAIT)
                except TimeoutError:
                    raise _WorkerFault("worker_lost", "the worker left the job without answering") from None
            # Frames from a worker this job already left (after a failover) are stale.
            if message.get("worker_id") == str(self.worker_id) and \
                    message["frame"]["type"] in ("embed.done", "job.error"):
                return message["frame"]

    async def _leave_worker(self, fault: _WorkerFault) -> None:
        logger.info("embedding job %s leaves worker %s: %s: %s", self.job.id, self.worker_id, fault.code, fault)
        if fault.code == "commitment_rejected":  # as a chat answer it did not sign (relay.py)
            await db(worker_outcome_record)(worker_id=self.worker_id, outcome="verification_failed")
        elif fault.code != "busy":  # a busy worker did nothing wrong; any other fault counts
            await db(worker_outcome_record)(worker_id=self.worker_id, outcome="failed")
        await self._let_go_of_worker()

    async def _let_go_of_worker(self) -> None:
        """Stop the claimed worker if it may still be embedding, and make it idle again (a no-op
        when its consumer did already, or it went offline)."""
        if self.worker_id is None:
            return
        if self.worker_working:
            try:
                await self._send_to_worker(protocol.job_cancel(job_id=str(self.job.id), reason="left"))
                await self._answer(time.monotonic() + CANCEL_GRACE)
            except (TimeoutError, _WorkerFault, *LAYER_ERRORS) as exc:
                logger.warning("worker %s did not confirm it stopped embedding job %s: %r",
                               self.worker_id, self.job.id, exc)
        if await db(worker_release)(worker_id=self.worker_id, job_id=self.job.id):
            vacancy_announce()
        self.worker_id = self.worker_channel = self.model = None
        self.worker_key = ""
        self.worker_working = False

    async def _let_go(self) -> None:
        await self._let_go_of_worker()
        await self._leave_group()

    async def _refund(self, code: str, message: str) -> None:
        self.job = await db(job_fail)(job_id=self.job.id, code=code, message=message)

    async def _send_to_worker(self, frame: dict) -> None:
        await self.layer.send(self.worker_channel, {"type": "agent.send", "frame": frame, "reply_to": self.channel})

    def _record_success(self, started: float, first_chunk: float) -> None:
        elapsed = time.monotonic() - started
        worker_completion_record(worker_id=self.worker_id, model_id=self.model["id"], ttft_ms=first_chunk * 1000,
                                 tokens_per_second=self.job.prompt_tokens / elapsed if elapsed > 0.001 else None)


def _signing_key(worker_id) -> str:
    return Worker.objects.filter(id=worker_id).values_list("signing_key", flat=True).first() or ""
