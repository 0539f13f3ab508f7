"""Re-executing an embedding job (docs/verification.md, "Embedding jobs").

A validator re-embeds the job's texts in the very chunks its worker was sent, as ordinary
embed.assign frames: an embedding's re-execution is the same computation and needs no scoring,
and a validator cannot tell a re-execution from a paid job. The node compares its vectors with
the ones the worker committed to, kept on the job (`output_text`, base64 of float32s as
committed: worker/embedding_commitment.py), by compare.compare_vectors.
"""

import base64
import hashlib

from apps.marketplace.models import Job
from apps.marketplace.vectors import vectors_problem
from worker import protocol
from worker.embedding_commitment import float32_bytes, float32_vectors

from .compare import Comparison, compare_vectors


def embed_assign_frames(*, job: Job, model: dict) -> list[dict]:
    """The job's embed.assign frames, chunked as the relay chunked them (embeddings.CHUNK)."""
    size = protocol.MAX_EMBED_INPUTS
    return [protocol.embed_assign(job_id=str(job.id), model=model["id"], model_digest=job.model_digest,
                                  input=job.inputs[start:start + size]) for start in range(0, len(job.inputs), size)]


def claimed_vectors(job: Job) -> list[list[float]]:
    """The vectors the worker committed to: one per input, all of one length."""
    data = base64.b64decode(job.output_text)
    return float32_vectors(data, dimensions=len(data) // 4 // max(len(job.inputs), 1))


def embedding_comparison(*, job: Job, vectors: list[list[float]]) -> tuple[Comparison, str]:
    """The validator's vectors against the claimed ones, and the sha256 of the validator's float32s."""
    return (compare_vectors(claimed=claimed_vectors(job), validator=vectors),
            hashlib.sha256(float32_bytes(vectors)).hexdigest())


async def embeddings_exchange(layer, channel: str, assignment) -> dict:
    """Send each chunk to the validator in turn and collect its vectors: {"type": "embed.result",
    "model_digest", "data"}, or the job.error it answered (a broken answer is told as one).
    The caller has joined the job's group and bounds the whole exchange with a timeout."""
    vectors: list[list[float]] = []
    digest = None
    for frame in assignment.chunks:
        await layer.send(assignment.channel, {"type": "agent.send", "frame": frame, "reply_to": channel})
        answer = await _validator_frame(layer, channel, assignment.worker_id)
        if answer["type"] == "job.error":
            return answer
        problem = vectors_problem(answer["data"], count=len(frame["input"]),
                                  dimensions=len(vectors[0]) if vectors else None)
        if problem:
            return {"type": "job.error", "code": "bad_vectors", "message": problem}
        digest = answer["model_digest"]
        vectors.extend(answer["data"])
    return {"type": "embed.result", "model_digest": digest, "data": vectors}


async def _validator_frame(layer, channel: str, worker_id) -> dict:
    while True:
        message = await layer.receive(channel)
        if message.get("worker_id") != str(worker_id):
            continue  # e.g. a frame of the job's own worker, late
        if message["frame"]["type"] in ("embed.done", "job.error"):
            return message["frame"]

