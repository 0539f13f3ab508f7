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
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from apps.workers.models import CatalogueModel, Worker
from apps.workers.metrics import worker_completion_record, worker_outcome_record
from apps.workers.roster import tier_has_workers
from apps.workers.routing import RoutePreferences
from apps.workers.selectors import model_attested, worker_for_enclave, worker_job_state
from apps.workers.services import worker_release, workers_release_job
from apps.workers.vacancies import vacancy_wait
from worker import protocol

from .confidential import attestation_snapshot, sealed_job_complete
from .models import Job
from .services import CommitmentRejected, job_claim_worker, job_complete, job_fail

logger = logging.getLogger(__name__)
ACCEPT_TIMEOUT = 10.0
JOB_ENDED = ("ended",)  # _claim_next: the job was settled before it could start
ROUTE_POLL_SECONDS = 0.2
# The channel layer failing under a job: Redis down or restarting (redis-py raises RedisError,
# sockets OSError). Frames in flight and group memberships may be gone with it.
# ChannelFull: a channel over its capacity (the layer is falling behind) is a layer failure too.
LAYER_ERRORS = (OSError, RedisError, ChannelFull)
# After this long without a frame the relay checks that its worker still holds the job: a frame
# lost with a restarting Redis would otherwise keep the client waiting for PEER_JOB_TIMEOUT.
SILENCE_CHECK_SECONDS = 2.0
LAST_FRAME_WAIT = 1.0


class JobFailed(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def job_group(job_id) -> str:
    return f"job.{job_id}"


class JobMailbox:
    """A relay's own channel in the job's group: what the worker's consumer sends the job's
    frames to. Needs `self.layer`, `self.channel`, `self._receiving` and `self.job`."""

    async def _receive(self, timeout: float) -> dict:
        """The next message on the relay's channel. A wait that times out leaves the receive
        pending for the next call: cancelling channels_redis's receive can drop a message."""
        if self._receiving is None:
            self._receiving = asyncio.ensure_future(self.layer.receive(self.channel))
        done, _ = await asyncio.wait({self._receiving}, timeout=timeout)
        if not done:
            raise TimeoutError
        received, self._receiving = self._receiving, None
        return received.result()

    async def _leave_group(self) -> None:
        if self._receiving is not None:
            self._receiving.cancel()
        if self.channel:
            try:
                await self.layer.group_discard(job_group(self.job.id), self.channel)
            except LAYER_ERRORS:  # the membership expires on its own (the layer's group_expiry)
                logger.warning("job %s: could not leave its group; the channel layer is down", self.job.id)


class JobRelay(JobMailbox):
    def __init__(self, *, job: Job, entry: CatalogueModel, route: RoutePreferences | None = None,
                 claimed: tuple | None = None):
        """`claimed`: (worker id, its channel, model) when the job was created with a worker
        already claimed and the job started on it (services.job_create_and_claim)."""
        self.job, self.entry, self.route = job, entry, route
        self.preclaimed = claimed
        self.model_id = ""
        self.assigned_at = self.first_token_at = None
        self.layer = get_channel_layer()
        self.channel = ""
        self.worker_id = None
        self.tried: set = set()
        self.text_parts: list[str] = []
        self.sealed_parts: list[dict] = []  # a confidential job's answer, as the enclave sealed it
        self.pinned: set[str] | None = None  # a confidential job goes to its enclave's worker only
        self.settled = False
        self.last_worker_error = ""  # why the last worker tried failed, for the client's error
        self._receiving: asyncio.Future | None = None

    async def start(self) -> None:
        """Join the job's group and get the job accepted by a worker, or refund and raise JobFailed."""
        try:
            # With the pub/sub layer a new channel is a SUBSCRIBE: Redis may be away already.
            self.channel = await self.layer.new_channel()
            await self.layer.group_add(job_group(self.job.id), self.channel)
        except LAYER_ERRORS as exc:
            if self.preclaimed is not None:  # nobody else would let it go
                await database_sync_to_async(worker_release)(worker_id=self.preclaimed[0], job_id=self.job.id)
                self.preclaimed = None
            await self._link_lost(exc)
        if self.job.sealed is not None:
            await self._pin_enclave()
        await self._route(deadline=time.monotonic() + settings.PEER_QUEUE_TIMEOUT)

    @property
    def relayed(self) -> int:
        """Pieces of the answer relayed so far, sealed or not."""
        return len(self.text_parts) + len(self.sealed_parts)

    async def _pin_enclave(self) -> None:
        """The request is sealed to one enclave's key: only its worker can open it."""
        worker = await database_sync_to_async(worker_for_enclave)(enclave_key=self.job.sealed["enclave_key"])
        if worker is None:
            await self._enclave_unavailable("No attested enclave on this network holds the key the request "
                                            "was sealed to (it restarted or went offline).")
        self.pinned = {str(worker.id)}

    async def _enclave_unavailable(self, why: str):
        await self._fail(503, "enclave_unavailable", f"{why} Re-attest (GET /v1/attestation) and seal the "
                         "request to another enclave; your credits were not charged.")

    async def deltas(self) -> AsyncIterator[str | dict]:
        """Yield text as the worker produces it (for a confidential job, each piece's envelope);
        on completion self.job is the settled job."""
        deadline = time.monotonic() + settings.PEER_JOB_TIMEOUT
        while True:
            frame = await self._next_frame(deadline)
            kind = frame["type"]
            if kind == "job.delta":
                if frame["seq"] != self.relayed:  # a frame went missing: never relay a gap
                    await self._link_lost(f"delta {frame['seq']} arrived when {self.relayed} was due")
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                if (self.job.sealed is not None) != ("sealed" in frame):
                    await self._fail(502, "worker_failed", "The worker answered a sealed request in the clear, "
                                     "or the other way round; the whole price was refunded.")
                piece = frame.get("sealed") or frame.get("text")
                (self.sealed_parts if "sealed" in frame else self.text_parts).append(piece)
                yield piece
            elif kind == "job.done":
                try:
                    await database_sync_to_async(self._complete)(frame)
                except CommitmentRejected as rejected:
                    await self._commitment_rejected(rejected)
                return
            elif kind == "job.error":
                await self._on_worker_error(frame)

    async def abort(self, reason: str) -> None:
        """The client went away: cancel on the worker and charge only what was delivered."""
        if self.settled:
            return
        if self.worker_id is not None:
            await self._send_to_worker(protocol.job_cancel(job_id=str(self.job.id), reason=reason))
        if self.sealed_parts:
            self.job = await database_sync_to_async(sealed_job_complete)(
                job_id=self.job.id, finish_reason="cancelled", model_digest=self.job.model_digest, usage=None,
                pieces=len(self.sealed_parts), enclave_signature=None, attestation=None)
        elif self.text_parts:
            self.job = await database_sync_to_async(job_complete)(
                job_id=self.job.id, output_text="".join(self.text_parts), finish_reason="cancelled",
                model_digest=self.job.model_digest, entry=self.entry)
        else:
            self.job = await database_sync_to_async(job_fail)(job_id=self.job.id, code="client_closed",
                                                               message=reason)
        self.settled = True

    async def abandon(self, reason: str) -> None:
        """The client left while the job was still being routed: settle it now and let go of any
        worker claimed for it (cancelled mid-claim, the relay may not know it: the database does)."""
        await self.abort(reason)
        await database_sync_to_async(workers_release_job)(job_id=self.job.id)
        await self.close()

    async def close(self) -> None:
        await self._leave_group()

    async def _route(self, *, deadline: float) -> None:
        tier_checked = False
        since = time.monotonic()  # its place among the relays waiting for a free worker
        while True:
            if await self._try_assign():
                return
            # Only once no worker could be claimed: a claimed one proves the tier is served,
            # and each database call from here costs a thread hop and a pooled connection.
            if not tier_checked and not await database_sync_to_async(tier_has_workers)(entry=self.entry,
                                                                                       tier=self.job.tier):
                await self._fail(503, "no_workers", f"No worker on this node serves the {self.job.tier} tier.")
            tier_checked = True
            if time.monotonic() >= deadline:
                if self.pinned is not None:
                    await self._enclave_unavailable(f"The enclave the request was sealed to stayed busy for "
                                                    f"{settings.PEER_QUEUE_TIMEOUT:.0f}s.")
                failed = f" after the worker it ran on failed ({self.last_worker_error})" \
                    if self.last_worker_error else ""
                await self._fail(503, "no_worker_available",
                                 f"No worker for {self.entry.name} ({self.job.tier}) became free in "
                                 f"{settings.PEER_QUEUE_TIMEOUT:.0f}s{failed}. Your credits were not charged.")
            await vacancy_wait(ROUTE_POLL_SECONDS, since=since)

    async def _try_assign(self) -> bool:
        while claimed := self._take_preclaimed() or await database_sync_to_async(self._claim_next)():
            if claimed is JOB_ENDED:
                # The job was settled elsewhere meanwhile (a reaper on this or another node refunded
                # it): never assign a job nobody will pay for.
                await self._fail(504, "job_timeout", "The job ran out of time before a worker took it; "
                                 "the whole price was refunded.")
            worker_id, channel, model = claimed
            self.worker_id, self.worker_channel, self.model_id = worker_id, channel, model["id"]
            self.assigned_at = time.monotonic()
            await self._send_to_worker(protocol.job_assign(
                job_id=str(self.job.id), model=model["id"], model_digest=model["digest"],
                messages=self.job.messages if self.job.is_chat and self.job.sealed is None else None,
                prompt=self.job.raw_prompt, params=self.job.params, sealed=self.job.sealed,
                stream=self.job.stream))
            try:
                frame = await self._next_frame(time.monotonic() + ACCEPT_TIMEOUT, route_on_error=False)
            except TimeoutError:
                logger.warning("worker %s did not accept job %s", worker_id, self.job.id)
                await database_sync_to_async(worker_outcome_record)(worker_id=worker_id, outcome="failed")
                await database_sync_to_async(worker_release)(worker_id=worker_id, job_id=self.job.id)
                continue
            if frame["type"] == "job.accepted":
                return True
            # job.error before acceptance (e.g. busy): the worker's consumer already released it.
            logger.info("worker %s refused job %s: %s", worker_id, self.job.id, frame.get("code"))
        return False

    def _take_preclaimed(self) -> tuple | None:
        """The worker claimed with the job's creation, once."""
        claimed, self.preclaimed = self.preclaimed, None
        if claimed is not None:
            self.tried.add(str(claimed[0]))
        return claimed

    def _claim_next(self) -> tuple | None:
        """Claim the best idle eligible worker not tried yet and start the job on it: (worker id,
        its channel, model), or None when none is free. One database call for ranking (from the
        cached roster) and, on PostgreSQL, one statement for the claim and the start."""
        claimed = job_claim_worker(job=self.job, entry=self.entry, route=self.route, exclude=self.tried,
                                   only=self.pinned)
        if claimed is None:
            return None
        worker_id, channel, model, started = claimed
        self.tried.add(str(worker_id))
        if not started:
            worker_release(worker_id=worker_id, job_id=self.job.id)
            return JOB_ENDED
        return worker_id, channel, model

    async def _next_frame(self, deadline: float, route_on_error: bool = True) -> dict:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if not route_on_error:
                    raise TimeoutError
                await database_sync_to_async(worker_outcome_record)(worker_id=self.worker_id, outcome="failed")
                await self._fail(504, "job_timeout", "The worker did not finish in time.")
            try:
                message = await self._receive(min(remaining, SILENCE_CHECK_SECONDS) if route_on_error else remaining)
            except TimeoutError:
                if not route_on_error:
                    continue
                state = await database_sync_to_async(worker_job_state)(
                    worker_id=self.worker_id, job_id=self.job.id, silence_seconds=settings.PEER_WORKER_SILENCE_LIMIT)
                if state == "holds":
                    continue
                if state == "silent":  # treated as the worker failing: fail over, or end the stream
                    return {"type": "job.error", "job_id": str(self.job.id), "code": "worker_silent",
                            "message": f"no word from the worker for {settings.PEER_WORKER_SILENCE_LIMIT:.0f}s"}
                message = await self._last_frame()
            except LAYER_ERRORS as exc:
                await self._link_lost(exc)
            # Frames from a worker this job already left (after a failover) are stale.
            if message.get("worker_id") == str(self.worker_id):
                return message["frame"]

    async def _last_frame(self) -> dict:
        """The worker no longer holds the job, yet its last frame has not arrived. Its consumer
        forwards that frame before letting the worker go, so by now it is in the layer: one short
        wait for it, else it was lost."""
        try:
            return await self._receive(LAST_FRAME_WAIT)
        except TimeoutError:
            await self._link_lost("the worker left the job without its last frame reaching the relay")
        except LAYER_ERRORS as exc:
            await self._link_lost(exc)

    async def _link_lost(self, why) -> None:
        """The channel layer failed or lost frames between the worker and this relay: the answer
        can no longer be relayed faithfully, so the job ends now, refunded, not at its timeout."""
        logger.warning("job %s: link to worker %s lost: %s", self.job.id, self.worker_id, why)
        await self._fail(503, "node_unavailable", "The node's link to the worker failed (its message bus was "
                         "unavailable or lost frames); the whole price was refunded. Retry shortly.")

    def _complete(self, done: dict) -> None:
        """Settle the job and record the worker's speed and success, in one database call."""
        if self.job.sealed is not None:
            self.job = sealed_job_complete(
                job_id=self.job.id, finish_reason=done["finish_reason"], model_digest=done["model_digest"],
                usage=done.get("usage"), pieces=len(self.sealed_parts), enclave_signature=done.get("enclave_signature"),
                attestation=attestation_snapshot(self._verdict(done["model_digest"])))
            self.settled = True
            self._record_success()
            return
        self.job = job_complete(job_id=self.job.id, output_text="".join(self.text_parts),
                                finish_reason=done["finish_reason"], model_digest=done["model_digest"], entry=self.entry,
                                signature=done.get("signature"), claimed_commitment=done.get("commitment"))
        self.settled = True
        self._record_success()

    async def _commitment_rejected(self, rejected: CommitmentRejected) -> None:
        """A verified answer its worker did not sign as relayed: no proof, so no charge, and the
        worker's reputation takes a failed verification's cut."""
        logger.warning("job %s: commitment rejected: %s", self.job.id, rejected)
        await database_sync_to_async(worker_outcome_record)(worker_id=self.worker_id, outcome="verification_failed")
        self.worker_id = None  # it already finished: nothing to cancel
        await self._fail(502, "commitment_rejected", f"The worker's signed commitment did not match the answer "
                         f"({rejected}); the whole price was refunded.")

    def _verdict(self, model_digest: str) -> dict | None:
        """The worker's current verdict for the model: what the proof shows routing relied on."""
        worker = Worker.objects.only("attestation").filter(id=self.worker_id).first()
        return model_attested(worker, model_digest) if worker else None

    def _record_success(self) -> None:
        done = time.monotonic()
        ttft = (self.first_token_at - self.assigned_at) * 1000 if self.first_token_at and self.assigned_at else None
        generating = done - self.first_token_at if self.first_token_at else 0
        tps = (self.job.completion_tokens or 0) / generating if generating > 0.001 else None
        worker_completion_record(worker_id=self.worker_id, model_id=self.model_id, ttft_ms=ttft, tokens_per_second=tps)

    async def _on_worker_error(self, frame: dict) -> None:
        if frame.get("code") != "busy":  # a busy worker did nothing wrong; any other error counts
            await database_sync_to_async(worker_outcome_record)(worker_id=self.worker_id, outcome="failed")
            # The worker's own words reach the client only shortened: they are not the node's.
            self.last_worker_error = f"{frame.get('code')}: {str(frame.get('message'))[:200]}"
        if frame.get("code") == "worker_lost":
            # The silent-worker reaper (apps/workers/tasks.py) already refunded the job: nothing
            # is left to fail over with, so the client hears it now rather than at a timeout.
            await self._fail(504, "worker_lost", "The worker stopped answering; the whole price was refunded.")
        if not self.relayed and self.pinned is not None:
            # Only this enclave can open the request: the client re-attests and re-seals.
            await self._enclave_unavailable(f"The enclave failed before its first token ({frame.get('code')}).")
        if not self.relayed:
            # Nothing reached the client yet: move the job to the next worker transparently.
            logger.info("job %s failing over after %s", self.job.id, frame.get("code"))
            await self._route(deadline=time.monotonic() + settings.PEER_QUEUE_TIMEOUT)
            return
        await self._fail(502, "worker_failed", f"The worker failed mid-answer ({frame.get('code')}): "
                         "the whole price was refunded.")

    async def _send_to_worker(self, frame: dict) -> None:
        try:
            await self.layer.send(self.worker_channel, {"type": "agent.send", "frame": frame, "reply_to": self.channel})
        except LAYER_ERRORS as exc:
            if frame["type"] == "job.cancel":  # moot: the agent's link fails with the layer too
                logger.warning("job %s: cancel not delivered: %s", self.job.id, exc)
                return
            if frame["type"] == "job.assign":
                # The assignment never left: nobody else will let the claimed worker go.
                await database_sync_to_async(worker_release)(worker_id=self.worker_id, job_id=self.job.id)
                self.worker_id = None
            await self._link_lost(exc)

    async def _fail(self, status: int, code: str, message: str):
        if self.worker_id is not None:  # stop a worker that may still be generating
            await self._send_to_worker(protocol.job_cancel(job_id=str(self.job.id), reason=code))
        self.job = await database_sync_to_async(job_fail)(job_id=self.job.id, code=code, message=message)
        self.settled = True
        raise JobFailed(status, code, message)
