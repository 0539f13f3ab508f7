"""The web chat's socket (/ws/chat/): a signed-in user sends a message, the answer's tokens come
back as they are generated, and "stop" ends it. A message becomes a job exactly as an API call
does (quote and hold, admission, routing, relay, settlement), charged to the session's user.

Client -> node:  {"type": "send", "conversation": id | null, "model", "tier", "content",
                  "max_tokens"?}  |  {"type": "stop"}
                 confidential: {"type": "send", "tier": "confidential", "conversation", "model",
                  "max_tokens"?, "peer_sealed"} and no content: the page sealed it to an enclave it
                  verified itself (static/js/confidential.js, docs/confidential.md)
Node -> client:  {"type": "started", "conversation", "job_id", "tier"}, {"type": "delta", "text"}*
                 (confidential: {"type": "sealed_delta", "seq", "sealed"}*),
                 then {"type": "done" | "stopped", "job_id", "cost_credits", "balance_credits",
                 "finish_reason", "proof_url", "worker_id"} (confidential: plus "enclave_signature"
                 and "attestation")
                 or {"type": "error", "code", "message"}
                 or {"type": "payment_required", "price_credits", "balance_credits", "buy_url"}

A confidential conversation keeps no messages on the node: their text exists only sealed, so the
page holds them (and seals the history with each new message).
"""

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.credits.pricing import MICRO_PER_CREDIT, micro_to_credits_ceil
from apps.marketplace.admission import job_admit
from apps.marketplace.confidential import sealed_job_create
from apps.marketplace.errors import ApiError
from apps.marketplace.relay import JobFailed, JobRelay
from apps.marketplace.services import InsufficientCredits, job_create
from peercycles.handlers import ThreadPerConnection

from .services import chat_answer_record, chat_message_prepare, chat_sealed_prepare

logger = logging.getLogger(__name__)
CLOSE_NOT_SIGNED_IN = 4401


class ChatConsumer(ThreadPerConnection, AsyncJsonWebsocketConsumer):
    answering: asyncio.Task | None = None

    async def connect(self):
        if not self.scope["user"].is_authenticated:
            await self.close(code=CLOSE_NOT_SIGNED_IN)
            return
        self.user = self.scope["user"]
        await self.accept()

    async def disconnect(self, code):
        if self.answering is not None:
            self.answering.cancel()  # the relay's abort charges only what was delivered

    async def receive_json(self, content, **kwargs):
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "stop":
            if self.answering is not None:
                self.answering.cancel()
            return
        if kind != "send":
            await self._error("invalid_message", "Send {\"type\": \"send\", ...} or {\"type\": \"stop\"}.")
            return
        if self.answering is not None and not self.answering.done():
            await self._error("busy", "An answer is still coming: stop it or wait for it.")
            return
        self.answering = asyncio.create_task(self._answer(content))

    async def _answer(self, request: dict):
        prepare = chat_sealed_prepare if request.get("tier") == "confidential" else chat_message_prepare
        try:
            prepared = await database_sync_to_async(prepare)(user=self.user, request=request)
        except ApiError as exc:
            await self._error(exc.body()["error"].get("code") or "invalid_request", exc.body()["error"]["message"])
            return
        conversation, chat, entry = prepared
        slot = await job_admit()
        try:
            await self._relay(conversation, chat, entry)
        except ApiError as exc:
            await self._error(exc.body()["error"].get("code") or "error", exc.body()["error"]["message"])
        finally:
            slot.release()

    async def _relay(self, conversation, chat, entry):
        try:
            create = sealed_job_create if chat.sealed is not None else job_create
            job = await database_sync_to_async(create)(user=self.user, chat=chat, entry=entry)
        except InsufficientCredits as short:
            await self.send_json({"type": "payment_required", "price_credits": micro_to_credits_ceil(short.price),
                                  "balance_credits": short.available // MICRO_PER_CREDIT, "buy_url": "/credits/buy"})
            return
        relay = JobRelay(job=job, entry=entry, route=chat.route)
        try:
            await relay.start()
            await self.send_json({"type": "started", "conversation": conversation.id, "job_id": str(job.id),
                                  "tier": chat.tier})
            async for piece in relay.deltas():
                if isinstance(piece, dict):  # sealed by the enclave for the page's reply key
                    await self.send_json({"type": "sealed_delta", "seq": len(relay.sealed_parts) - 1,
                                          "sealed": piece})
                else:
                    await self.send_json({"type": "delta", "text": piece})
            await self._finish(conversation, relay, "done")
        except JobFailed as exc:
            await self._error(exc.code, exc.message)
        except asyncio.CancelledError:  # stop, or the page went away
            await asyncio.shield(self._stop(conversation, relay))
        finally:
            await relay.close()

    async def _stop(self, conversation, relay: JobRelay):
        # abandon, not abort: a stop during routing may leave a worker claimed for the job.
        await relay.abandon("stopped by the user")
        await self._finish(conversation, relay, "stopped")

    async def _finish(self, conversation, relay: JobRelay, kind: str):
        job = relay.job
        text = "".join(relay.text_parts)
        balance = await database_sync_to_async(chat_answer_record)(conversation=conversation, job=job, text=text)
        proof = job.commitment if job.sealed is not None and job.commitment else {}
        try:
            await self.send_json({
                "type": kind, "job_id": str(job.id), "finish_reason": job.finish_reason or kind,
                "cost_credits": micro_to_credits_ceil(job.charged_amount or 0), "balance_credits": balance,
                "worker_id": str(job.worker_id) if job.worker_id else None,
                "verification": job.verification_status or None, "proof_url": f"/v1/jobs/{job.id}/proof",
                **({"enclave_signature": proof.get("enclave_signature"), "attestation": proof.get("attestation")}
                   if job.sealed is not None else {})})
        except Exception:  # noqa: BLE001 - the page left: the answer is saved all the same
            logger.info("chat: the page left before job %s's %s was sent", job.id, kind)

    async def _error(self, code: str, message: str):
        await self.send_json({"type": "error", "code": code, "message": message})
