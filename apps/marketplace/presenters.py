"""OpenAI-shaped response bodies (completions, embeddings) and SSE chunks for a job, with the
`peer` extension object."""

import json

from apps.credits.pricing import micro_to_credits_ceil

from .models import Job
from .vectors import float32_base64


def peer_object(job: Job) -> dict:
    commitment = job.commitment or {}
    if commitment.get("kind") == "enclave":
        return {**_peer_common(job), "usage_source": commitment.get("usage_source"), **enclave_proof(commitment)}
    return {
        "job_id": str(job.id),
        "worker_id": str(job.worker_id) if job.worker_id else None,
        "tier": job.tier,
        "served_model": job.served_model,
        "price_credits": micro_to_credits_ceil(job.charged_amount or 0),
        "price_micro_usdc": job.charged_amount,
        "held_micro_usdc": job.hold_amount,
        "usage_source": commitment.get("usage_source"),
        "commitment": {"hash": commitment.get("hash"), "inputs": commitment.get("inputs"),
                       "signature": commitment.get("signature"),
                       "worker_public_key": commitment.get("worker_public_key"),
                       **_chunks(commitment)} if commitment else None,
        "attestation": None,
    }


def _chunks(commitment: dict) -> dict:
    """An embedding job's signed chunks (worker/embedding_commitment.py): its job-level hash is
    the node's; each chunk's is the worker's, signed. Absent for generation jobs."""
    return {"chunks": commitment["chunks"]} if "chunks" in commitment else {}


def _peer_common(job: Job) -> dict:
    return {"job_id": str(job.id), "worker_id": str(job.worker_id) if job.worker_id else None, "tier": job.tier,
            "served_model": job.served_model, "price_credits": micro_to_credits_ceil(job.charged_amount or 0),
            "price_micro_usdc": job.charged_amount, "held_micro_usdc": job.hold_amount}


def enclave_proof(commitment: dict) -> dict:
    """A confidential job's proof (docs/confidential.md §3): the enclave's signature over request
    and answer, and the attestation verdict the job was routed on."""
    return {"commitment": None, "enclave_signature": commitment.get("enclave_signature"),
            "attestation": commitment.get("attestation")}


def proof_body(job: Job, verification: dict) -> dict:
    """GET /v1/jobs/{id}/proof: what a client needs to check the answer offline (python -m
    worker.commitment): the commitment and its inputs (the prompt and output only as hashes),
    the worker's signature and public key, and where verification stands (`verification`, from
    apps.verification.presenters.verification_record)."""
    commitment = job.commitment or {}
    if commitment.get("kind") == "enclave":
        return {"object": "peer.proof", "job_id": str(job.id), "tier": job.tier, "status": job.status,
                "served_model": job.served_model, "worker_id": str(job.worker_id) if job.worker_id else None,
                **enclave_proof(commitment), "verification": verification}
    return {
        "object": "peer.proof",
        "job_id": str(job.id),
        "tier": job.tier,
        "status": job.status,
        "served_model": job.served_model,
        "worker_id": str(job.worker_id) if job.worker_id else None,
        "worker_public_key": commitment.get("worker_public_key"),
        "commitment": {"hash": commitment.get("hash"), "inputs": commitment.get("inputs"),
                       "signature": commitment.get("signature"), **_chunks(commitment)} if commitment else None,
        "verification": verification,
    }


def usage(job: Job) -> dict:
    completion = job.completion_tokens or 0
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion,
            "total_tokens": job.prompt_tokens + completion}


def finish_reason(job: Job) -> str:
    return "length" if job.finish_reason == "length" else "stop"


def _envelope(job: Job, *, chunk: bool) -> dict:
    if job.is_chat:
        return {"id": f"chatcmpl-{job.id.hex}", "object": "chat.completion.chunk" if chunk else "chat.completion",
                "created": int(job.created_at.timestamp()), "model": job.public_model}
    return {"id": f"cmpl-{job.id.hex}", "object": "text_completion",
            "created": int(job.created_at.timestamp()), "model": job.public_model}


def _choice(job: Job, *, text: str | None, finish: str | None, chunk: bool) -> dict:
    if not job.is_chat:
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    if chunk:
        delta = {"content": text} if text is not None else {}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": finish}


def completion_body(job: Job, sealed: list[dict] | None = None) -> dict:
    """The non-streamed answer: a chat.completion or a text_completion, with usage and `peer`.
    A confidential answer's content is null: its pieces are in peer.sealed, in order."""
    if job.sealed is not None:
        return {**_envelope(job, chunk=False),
                "choices": [_choice(job, text=None, finish=finish_reason(job), chunk=False)],
                "usage": usage(job), "peer": {**peer_object(job), "sealed": sealed or []}}
    return {**_envelope(job, chunk=False),
            "choices": [_choice(job, text=job.output_text, finish=finish_reason(job), chunk=False)],
            "usage": usage(job), "peer": peer_object(job)}


def sse(data: dict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {payload}\n\n".encode("utf-8")


def opening_chunk(job: Job) -> bytes | None:
    """Chat streams open with the assistant's role, as OpenAI's do; completions have none."""
    if not job.is_chat:
        return None
    return sse({**_envelope(job, chunk=True),
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}]})


def text_chunk(job: Job, text: str) -> bytes:
    return sse({**_envelope(job, chunk=True), "choices": [_choice(job, text=text, finish=None, chunk=True)]})


def sealed_chunk(job: Job, seq: int, envelope: dict) -> bytes:
    """One piece of a confidential answer, sealed by the enclave to the client's reply key."""
    return sse({**_envelope(job, chunk=True), "choices": [_choice(job, text=None, finish=None, chunk=True)],
                "peer": {"seq": seq, "sealed": envelope}})


def closing_chunk(job: Job) -> bytes:
    """The finish reason, and the `peer` object now that the job is settled."""
    return sse({**_envelope(job, chunk=True), "choices": [_choice(job, text=None, finish=finish_reason(job),
                                                                  chunk=True)],
                "peer": peer_object(job)})


def usage_chunk(job: Job) -> bytes:
    return sse({**_envelope(job, chunk=True), "choices": [], "usage": usage(job)})


def embedding_body(job: Job, vectors: list[list[float]], *, encoding_format: str) -> dict:
    """OpenAI's embeddings response, one item per input in order, with usage and `peer`."""
    encode = float32_base64 if encoding_format == "base64" else (lambda vector: vector)
    return {"object": "list",
            "data": [{"object": "embedding", "index": index, "embedding": encode(vector)}
                     for index, vector in enumerate(vectors)],
            "model": job.public_model,
            "usage": {"prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens},
            "peer": peer_object(job)}
