"""The agent link: one WebSocket per connected worker agent (protocol in worker/protocol.py)."""

import asyncio
import logging
import time

from asgiref.sync import ThreadSensitiveContext
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from redis.exceptions import RedisError

from worker import protocol

from .attest_link import AttestingLink
from .services import WorkerAuthError, worker_connect, worker_disconnect, worker_release, worker_seen
from .vacancies import vacancy_announce

logger = logging.getLogger(__name__)
HELLO_TIMEOUT = 10.0
_CLOSE_CODES = {"bad_token": protocol.CLOSE_BAD_TOKEN, "revoked": protocol.CLOSE_REVOKED}
# The channel layer failing under a link: Redis down or restarting (as relay.LAYER_ERRORS).
# ChannelFull: a channel over its capacity (the layer is falling behind) is a layer failure too.
_LAYER_ERRORS = (OSError, RedisError, ChannelFull)


class AgentConsumer(AttestingLink, AsyncJsonWebsocketConsumer):
    """Forwards the worker's job frames to the relay that assigned the job (straight to its
    channel; to the group `job.<uuid>` when its channel is not known); sends node frames to the
    agent.

    Only frames for jobs assigned on this link are forwarded; anything that breaks the protocol
    drops the link (and the relay of an affected job fails over or refunds).
    """

    worker_id = None

    async def __call__(self, scope, receive, send):
        # A thread of the link's own for its database calls (peercycles.handlers.ThreadPerConnection
        # says why), around the failure handling below too.
        async with ThreadSensitiveContext():
            await self._serve(scope, receive, send)

    async def _serve(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        except _LAYER_ERRORS as exc:
            # Channels ends a consumer whose layer fails without calling disconnect(), and daphne
            # would leave the socket open: offline the worker here (nothing is routed to a dead
            # link) and close, so the agent reconnects and says hello once the layer is back.
            if self.worker_id is not None:
                await self.disconnect(None)
            await self._drop("node_unavailable", f"The node's channel layer failed ({exc}); reconnect.",
                             close_code=1000)
        except asyncio.CancelledError:
            # daphne stopping (a deploy, a scale-in) cancels every link without a disconnect and
            # waits for it: offline the worker and fail its job over before this process goes.
            if self.worker_id is not None:
                await self.disconnect(None)
            raise

    async def dispatch(self, message):
        # channels runs aclose_old_connections() (a thread hop) before every message a consumer
        # handles, so each job.delta paid one. Every database call here goes through
        # database_sync_to_async, which closes stale connections itself, and relaying a delta
        # touches no database: the hop is skipped (docs/benchmarks.md).
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self):
        self.jobs: dict[str, str] = {}  # job id -> the channel of the relay that assigned it
        self.challenges, self.confidential_digests = {}, []  # AttestingLink's, before any hello
        await self.accept()
        self.hello_timer = asyncio.get_running_loop().call_later(HELLO_TIMEOUT, self._hello_overdue)

    def _hello_overdue(self):
        if self.worker_id is None:
            asyncio.ensure_future(self._drop("hello_timeout", "No hello within the time limit."))

    async def receive(self, text_data=None, bytes_data=None):
        # The JSON mixin would raise on garbage; here garbage is answered and the link dropped.
        try:
            frame = protocol.decode_agent_frame(text_data if text_data is not None else None)
        except protocol.ProtocolError as exc:
            await self._drop("protocol_error", str(exc))
            return
        if self.worker_id is None:
            await self._hello(frame)
        elif frame["type"] == "heartbeat":
            await self._seen()
            await self.send_json({"type": "heartbeat"})
            await self.attest_refresh_if_due()
        elif frame["type"] in ("attest.evidence", "attest.error"):
            await self.attest_frame(frame)
        elif frame["type"] == "hello":
            await self._drop("protocol_error", "hello was already received on this link")
        else:
            await self._job_frame(frame)

    async def _seen(self):
        """Record that the agent is alive, at most every third of the silence limit: the silence
        reaper and a relay's check only need last_seen_at well inside that limit (the next write
        comes at most a heartbeat later), and a write per heartbeat of every idle agent was a
        database call each: 6% of the node's CPU with 200 agents at 10 s (docs/benchmarks.md)."""
        now = time.monotonic()
        if now - self.seen_written_at >= settings.PEER_WORKER_SILENCE_LIMIT / 3:
            await database_sync_to_async(worker_seen)(worker_id=self.worker_id)
            self.seen_written_at = now

    async def _hello(self, frame: dict):
        if frame["type"] != "hello":
            await self._drop("protocol_error", "the first frame must be hello")
            return
        if frame["protocol"] != protocol.PROTOCOL_VERSION:
            await self._drop("protocol_error", f"protocol {frame['protocol']} is not supported; "
                             f"this node speaks {protocol.PROTOCOL_VERSION}")
            return
        try:
            worker, replaced, stranded_job = await database_sync_to_async(worker_connect)(
                raw_token=frame["token"], hello=frame, channel_name=self.channel_name)
        except WorkerAuthError as exc:
            await self._drop(exc.code, str(exc), close_code=_CLOSE_CODES[exc.code])
            return
        self.hello_timer.cancel()
        self.worker_id = worker.id
        self.seen_written_at = time.monotonic()  # worker_connect set last_seen_at
        if replaced and replaced != self.channel_name:
            await self.channel_layer.send(replaced, {"type": "agent.replaced"})
        if stranded_job:
            # The old link's node process may be dead (killed, no disconnect handler ran), with
            # the job's relay on another node still waiting: tell it here. If the old link is
            # alive it says the same; the relay ignores a second notice from a worker it left.
            await self._fail_jobs({str(stranded_job)}, "The worker's agent reconnected; the job it held was lost.")
        logger.info("worker %s (%s) online with %s", worker.name, worker.id,
                    [m["id"] for m in frame["models"]])
        await self.send_json(protocol.welcome(worker_id=str(worker.id),
                                              heartbeat_interval=settings.PEER_HEARTBEAT_INTERVAL))
        self.attest_setup(frame)
        await self.attest_challenge()

    async def _job_frame(self, frame: dict):
        job_id = frame["job_id"]
        if job_id not in self.jobs:
            return  # a late frame for a job this node already cancelled or never sent
        message = {"type": "job.frame", "worker_id": str(self.worker_id), "frame": frame}
        if relay := self.jobs[job_id]:
            # One round trip to Redis per frame; a group_send is four (docs/benchmarks.md).
            try:
                await self.channel_layer.send(relay, message)
            except ChannelFull:
                # The node process's inbox is over capacity (it is falling behind): this frame is
                # lost, as a group_send would drop it, and the relay ends the job, refunded, at
                # the gap in sequence numbers or the silence. Other jobs on this link live on.
                logger.warning("job %s: frame %s dropped, the relay's inbox is full", job_id, frame["type"])
        else:
            await self.channel_layer.group_send(f"job.{job_id}", message)
        if frame["type"] in ("job.done", "job.error", "embed.done", "validate.done"):
            self.jobs.pop(job_id, None)
        # An embedding job keeps its worker across its chunks: its relay releases it at the end.
        if frame["type"] in ("job.done", "job.error", "validate.done"):
            if await database_sync_to_async(worker_release)(worker_id=self.worker_id, job_id=job_id):
                vacancy_announce()

    async def agent_send(self, event):
        """A frame from the node (job.assign, embed.assign, validate.assign, job.cancel) for this agent."""
        frame = event["frame"]
        if frame["type"] in ("job.assign", "embed.assign", "validate.assign"):
            self.jobs[frame["job_id"]] = event.get("reply_to") or ""
        await self.send_json(frame)

    async def agent_replaced(self, event):
        """Another agent connected with this worker's token: this older link ends."""
        await self._fail_jobs(set(self.jobs), "The worker's agent was replaced by a new connection.")
        self.jobs.clear()
        await self._drop("replaced", "Another agent connected with this worker's token.",
                         close_code=protocol.CLOSE_REPLACED)

    async def agent_revoked(self, event):
        """The operator revoked this worker's token or rotated it: this link ends now. The worker
        goes offline at once (not at the close handshake), so its job fails over right away."""
        job_id = await database_sync_to_async(worker_disconnect)(worker_id=self.worker_id,
                                                                 channel_name=self.channel_name)
        await self._fail_jobs(set(self.jobs) | ({str(job_id)} if job_id else set()),
                              "The worker's token was revoked.")
        self.jobs.clear()
        await self._drop("revoked", event.get("message") or "This worker's token was revoked.",
                         close_code=protocol.CLOSE_REVOKED)

    async def _drop(self, code: str, message: str, close_code: int = protocol.CLOSE_PROTOCOL_ERROR):
        logger.warning("dropping agent link (worker %s): %s: %s", self.worker_id, code, message)
        try:
            await self.send_json(protocol.error(code=code, message=message))
        finally:
            await self.close(code=close_code)

    async def disconnect(self, code):
        self.hello_timer.cancel()
        if self.worker_id is None:
            return
        job_id = await database_sync_to_async(worker_disconnect)(worker_id=self.worker_id,
                                                                 channel_name=self.channel_name)
        await self._fail_jobs(set(self.jobs) | ({str(job_id)} if job_id else set()), "The worker's link dropped.")
        logger.info("worker %s offline", self.worker_id)

    async def _fail_jobs(self, job_ids, message: str):
        """Tell each job's relay its worker is gone (it fails over or refunds)."""
        for open_job in job_ids:
            try:
                await self.channel_layer.group_send(f"job.{open_job}", {
                    "type": "job.frame", "worker_id": str(self.worker_id),
                    "frame": {"type": "job.error", "job_id": open_job, "code": "worker_disconnected",
                              "message": message}})
            except _LAYER_ERRORS:  # the relay sees its worker offline and ends the job itself
                logger.warning("could not tell job %s its worker %s is gone", open_job, self.worker_id)
