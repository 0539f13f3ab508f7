"""Attestation over an agent link (docs/confidential.md §4): the node challenges the agent's
enclave with a fresh nonce per confidential model after `welcome` and again before the verdict
expires, and relays challenges a client made (GET /v1/attestation with a nonce) to the enclave and
its evidence back, unjudged: such a client verifies it itself.

A nonce lives in the link that sent it, is answered once, and only within
NONCE_LIFETIME_SECONDS: evidence for a nonce this link did not send, sent before, or too long
ago is dropped (and logged), so evidence cannot be replayed into a verdict.
"""

import logging
import time
import uuid

from channels.db import database_sync_to_async
from django.conf import settings

from apps.verification.attestation import NONCE_LIFETIME_SECONDS, nonce_new, worker_attestation_record
from worker import protocol

logger = logging.getLogger(__name__)
# A model still without a verdict is challenged again at the next heartbeat this long after.
RETRY_SECONDS = 15.0


class AttestingLink:
    """Mixed into AgentConsumer: needs `worker_id`, `send_json`, `channel_layer`."""

    def attest_setup(self, hello: dict) -> None:
        self.attested_digests: set[str] = set()
        self.attest_retry = RETRY_SECONDS  # doubles with each retry: a refused enclave is not pestered
        self.confidential_digests = [m["digest"] for m in hello["models"] if m.get("confidential")]
        self.attested_at = 0.0

    async def attest_challenge(self) -> None:
        """A node nonce for every confidential model this agent serves."""
        self.attested_at = time.monotonic()
        for digest in self.confidential_digests:
            await self._challenge(nonce_new(), digest, reply_to=None)

    async def attest_refresh_if_due(self) -> None:
        """Called on every heartbeat: challenge again at half the verdict's lifetime, or after
        RETRY_SECONDS (doubling) while a model has no verdict yet (its answer lost, refused, not recorded)."""
        if not self.confidential_digests:
            return
        waited = time.monotonic() - self.attested_at
        unverified = set(self.confidential_digests) - self.attested_digests
        if unverified and waited >= self.attest_retry:
            self.attest_retry = min(self.attest_retry * 2, settings.PEER_ATTESTATION_MAX_AGE / 2)
            await self.attest_challenge()
        elif waited >= settings.PEER_ATTESTATION_MAX_AGE / 2:
            await self.attest_challenge()

    async def _challenge(self, nonce: str, digest: str, *, reply_to: str | None) -> None:
        request_id = uuid.uuid4().hex
        self.challenges[request_id] = {"nonce": nonce, "digest": digest, "sent": time.monotonic(),
                                       "reply_to": reply_to}
        await self.send_json(protocol.attest_request(request_id=request_id, nonce=nonce, model_digest=digest))

    async def attest_frame(self, frame: dict) -> None:
        """attest.evidence or attest.error from the agent."""
        challenge = self.challenges.pop(frame["request_id"], None)
        if challenge is None or time.monotonic() - challenge["sent"] > NONCE_LIFETIME_SECONDS:
            logger.warning("worker %s: %s for a nonce this link did not send, or sent too long ago: dropped",
                           self.worker_id, frame["type"])
            return
        if challenge["reply_to"]:
            await self.channel_layer.send(challenge["reply_to"], {
                "type": "attest.reply", "worker_id": str(self.worker_id), "frame": frame})
            return
        if frame["type"] == "attest.error":
            logger.warning("worker %s: its enclave refused attestation for %s: %s: %s", self.worker_id,
                           challenge["digest"], frame["code"], frame["message"])
            return
        record = await database_sync_to_async(worker_attestation_record)(
            worker_id=self.worker_id, model_digest=challenge["digest"], nonce=challenge["nonce"],
            evidence=frame["evidence"])
        if record["ok"]:
            self.attested_digests.add(challenge["digest"])
            logger.info("worker %s attested for %s (%s%s)", self.worker_id, challenge["digest"], record["kind"],
                        ", SIMULATED: no hardware guarantee" if record["simulated"] else "")
        else:
            logger.warning("worker %s: attestation refused for %s: %s", self.worker_id, challenge["digest"],
                           "; ".join(record["problems"]))

    async def agent_attest(self, event: dict) -> None:
        """A client's challenge (apps/verification/views_attestation.py): relay it to the enclave."""
        if event["model_digest"] not in self.confidential_digests:
            return
        await self._challenge(event["nonce"], event["model_digest"], reply_to=event["reply_to"])
