"""Helpers for embedding verification tests: embedding workers with keys, signed verified
embedding jobs (chunk by chunk, as the relay records them), a validator's turn."""

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from apps.credits.services import credits_grant
from apps.marketplace.embedding_proofs import chunk_proof
from apps.marketplace.models import Job
from apps.marketplace.requests import parse_embedding_request
from apps.marketplace.services import embed_job_complete, embed_job_create, job_start
from apps.verification.services import validation_record, validator_claim
from apps.workers.models import Worker
from apps.workers.services import worker_register
from tests.conftest import bond
from worker import protocol
from worker.commitment import commitment_sign, public_key_text
from worker.embedding_commitment import chunk_commitment

TEXTS = [f"Sentence {i} about rivers, lakes and the sea." for i in range(40)]  # two chunks: 32 + 8


def vectors_for(texts, shift=0.0) -> list[list[float]]:
    """Stand-in model: a unit vector per text that depends on it (and on `shift`, a cheat)."""
    out = []
    for text in texts:
        raw = [float(len(text) % 7 + 1), float(sum(map(ord, text)) % 11 + 1), 1.0 + shift]
        norm = sum(x * x for x in raw) ** 0.5
        out.append([float(f"{x / norm:.9g}") for x in raw])
    return out


def make_embedder(operator, entry, name, *, bonded=False, validates=True) -> tuple[Worker, object]:
    worker = worker_register(operator=operator, name=name, tiers=["open", "verified"])[0]
    key = Ed25519PrivateKey.generate()
    served = [{"id": entry.served_model, "digest": entry.digests[0], "backend": "minilm", "kind": "embedding",
               "validates": validates}]
    Worker.objects.filter(id=worker.id).update(status="idle", channel_name=f"specific.test!{name}",
                                               signing_key=public_key_text(key), models_served=served)
    worker = Worker.objects.get(id=worker.id)
    if bonded:
        bond(worker)
    return worker, key


def verified_embedding_job(user, worker, key, entry, vectors=None, texts=TEXTS, tier="verified") -> Job:
    credits_grant(user=user, credits=100)
    body = json.dumps({"model": entry.name, "input": texts, "peer_tier": tier}).encode()
    job = embed_job_create(user=user, embedding=parse_embedding_request(body, default_tier="verified"), entry=entry)
    job_start(job_id=job.id, worker_id=worker.id, model_digest=entry.digests[0], price_per_token=40)
    vectors = vectors if vectors is not None else vectors_for(texts)
    chunks = []
    for start in range(0, len(texts), protocol.MAX_EMBED_INPUTS):
        part, data = texts[start:start + protocol.MAX_EMBED_INPUTS], vectors[start:start + protocol.MAX_EMBED_INPUTS]
        _, commitment = chunk_commitment(model_id=entry.served_model, model_digest=entry.digests[0], texts=part,
                                         vectors=data)
        frame = protocol.embed_done(job_id=str(job.id), model_digest=entry.digests[0], data=data, prompt_tokens=1,
                                    commitment=commitment, signature=commitment_sign(key, commitment))
        chunks.append(chunk_proof(frame, texts=part, model_id=entry.served_model,
                                  public_key=public_key_text(key), required=tier == "verified"))
    Worker.objects.filter(id=worker.id).update(status="idle", current_job_id=None)  # the relay's release
    return embed_job_complete(job_id=job.id, vectors=vectors, model_digest=entry.digests[0], chunks=chunks,
                              public_key=public_key_text(key))


def validator_embeds(validation_id, *, vectors, digest=None):
    """A validator's turn: claimed, sent the job's chunks, its vectors recorded."""
    assignment = validator_claim(validation_id=validation_id)
    assert assignment is not None and assignment.frame is None
    job = Job.objects.get(id=assignment.job_id)
    assert [f["input"] for f in assignment.chunks] == [job.inputs[:32], job.inputs[32:]][:len(assignment.chunks)]
    follow_up = validation_record(validation_id=validation_id, worker_id=assignment.worker_id,
                                  done={"model_digest": digest or job.model_digest, "data": vectors})
    return assignment, follow_up
