"""Confidential job writes (docs/confidential.md): quote, hold, settle and prove a job whose
request and answer the node holds only sealed.

What the node cannot count it bounds: a sealed request of n bytes is at most n prompt tokens (a
token is at least one byte of the body, whose JSON around the messages outweighs the chat
template's markers), so the hold covers it; the charge takes the enclave's own counts, never
above those bounds. The answer is not stored: the node keeps the enclave's signature over request
and answer and the attestation verdict it routed on, which is the job's proof.
"""

import hashlib
import json

from django.conf import settings

from apps.credits.pricing import job_price
from apps.workers.models import CatalogueModel
from apps.workers.roster import price_ceiling

from .models import Job
from .requests import ChatRequest
from .services import Quote, _job_capture, _job_create_held


def sealed_job_quote(*, chat: ChatRequest, entry: CatalogueModel) -> Quote:
    ceiling = price_ceiling(entry=entry, tier=chat.tier, max_price=chat.route.max_price_per_token)
    amount = job_price(base=settings.PEER_TIER_BASE_PRICE[chat.tier], per_token=ceiling,
                       prompt_tokens=chat.sealed_size, completion_tokens=chat.max_tokens)
    return Quote(prompt_tokens=chat.sealed_size, amount=amount, price_ceiling=ceiling)


def sealed_job_create(*, user, chat: ChatRequest, entry: CatalogueModel) -> Job:
    """Hold the quote of a sealed chat request and create its job; see services._job_create_held.
    prompt_sha256 is over the sealed request as sent: the node has nothing else to hash."""
    envelope = json.dumps(chat.sealed["request"], sort_keys=True, separators=(",", ":"))
    return _job_create_held(
        user=user, quote=sealed_job_quote(chat=chat, entry=entry), public_model=entry.name,
        served_model=entry.served_model, tier=chat.tier, stream=chat.stream, messages=[], raw_prompt=None,
        sealed=chat.sealed, params=chat.params(), proof_public=chat.public_proof, seed=chat.seed,
        prompt_sha256=hashlib.sha256(envelope.encode("ascii")).hexdigest())


def sealed_job_complete(*, job_id, finish_reason: str, model_digest: str, usage: dict | None,
                        pieces: int, enclave_signature: str | None, attestation: dict | None) -> Job:
    """Settle a confidential job: prompt tokens as the enclave counted them (at most the bound
    the hold was quoted with), completion tokens as it counted them (at least the pieces relayed,
    at most max_tokens). A cancelled job that never got the enclave's count pays the bound for
    its prompt and one token per piece delivered. The proof: `enclave_signature` and the verdict
    (`attestation`, the worker's record without its evidence) routing relied on."""
    usage = usage if isinstance(usage, dict) else {}

    def count(value, low: int, high: int) -> int:
        valid = isinstance(value, int) and not isinstance(value, bool)
        return min(max(value if valid else high, low), high)

    def settle(job: Job) -> tuple[int, dict]:
        prompt_tokens = count(usage.get("prompt_tokens"), 0, job.prompt_tokens)
        completion_tokens = count(usage.get("completion_tokens"), pieces, job.params["max_tokens"]) \
            if usage else min(pieces, job.params["max_tokens"])
        charge = min(job.hold_amount, job_price(
            base=settings.PEER_TIER_BASE_PRICE[job.tier], per_token=job.price_per_token or 0,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))
        proof = {"kind": "enclave", "enclave_signature": enclave_signature, "attestation": attestation,
                 "usage_source": "enclave" if usage else "pieces relayed"}
        return charge, {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                        "finish_reason": finish_reason, "model_digest": model_digest, "commitment": proof}

    return _job_capture(job_id=job_id, settle=settle)


def attestation_snapshot(record: dict | None) -> dict | None:
    """What a proof shows of the verdict the job was routed on: everything but the evidence
    itself (GET /v1/attestation serves that)."""
    if not record:
        return None
    return {key: record.get(key) for key in ("kind", "simulated", "enclave_key", "signing_key",
                                             "code_measurement", "nonce", "ok", "problems",
                                             "verified_at", "expires_at")}
