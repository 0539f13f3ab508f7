"""OpenAI-shaped response bodies and SSE chunks for a job, with the `peer` extension object."""

import json
import time

from apps.credits.pricing import micro_to_credits_ceil

from .models import Job


def peer_object(job: Job) -> dict:
    commitment = job.commitment or {}
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
                       "signature": None} if commitment else None,
        "attestation": None,
    }


def usage(job: Job) -> dict:
    completion = job.completion_tokens or 0
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion,
            "total_tokens": job.prompt_tokens + completion}


def finish_reason(job: Job) -> str:
    return "length" if job.finish_reason == "length" else "stop"


def chat_completion(job: Job) -> dict:
    return {
        "id": f"chatcmpl-{job.id.hex}",
        "object": "chat.completion",
        "created": int(job.created_at.timestamp()),
        "model": job.public_model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": job.output_text},
                     "logprobs": None, "finish_reason": finish_reason(job)}],
        "usage": usage(job),
        "peer": peer_object(job),
    }


def sse(data: dict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {payload}\n\n".encode("utf-8")


def chunk(job: Job, *, delta: dict, finish: str | None = None, **extra) -> bytes:
    return sse({"id": f"chatcmpl-{job.id.hex}", "object": "chat.completion.chunk",
                "created": int(job.created_at.timestamp() if job.created_at else time.time()),
                "model": job.public_model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra})
