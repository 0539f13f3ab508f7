"""Helpers for verification tests: workers with keys and bonds, signed verified jobs, a
validator's turn (claimed, answered, released as its consumer would)."""

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from apps.credits.services import credits_grant
from apps.marketplace.models import Job
from apps.marketplace.requests import parse_chat_request
from apps.marketplace.services import job_complete, job_create, job_start
from apps.verification.services import validation_record, validator_claim
from apps.workers.models import Worker
from apps.workers.services import worker_register
from tests.conftest import bond
from worker.commitment import commitment_hash, commitment_inputs, commitment_sign, public_key_text

ANSWER = "Red, yellow and blue."
HONEST_LOGPROBS = [-0.4, -0.9, -0.2, -1.1]
CHEAT_LOGPROBS = [-3.9, -9.7, -2.5, -4.0]


def served(entry, validates=True) -> list[dict]:
    return [{"id": entry.served_model, "digest": entry.digests[0], "backend": "builtin", "validates": validates}]


def make_worker(operator, entry, name, *, bonded=False, validates=True) -> tuple[Worker, object]:
    worker = worker_register(operator=operator, name=name, tiers=["open", "verified"])[0]
    key = Ed25519PrivateKey.generate()
    Worker.objects.filter(id=worker.id).update(status="idle", channel_name=f"specific.test!{name}",
                                               signing_key=public_key_text(key), models_served=served(entry, validates))
    worker = Worker.objects.get(id=worker.id)
    if bonded:
        bond(worker)
    return worker, key


def verified_job(user, worker, key, entry, output=ANSWER, temperature=0.0) -> Job:
    credits_grant(user=user, credits=100)
    body = json.dumps({"model": entry.name, "messages": [{"role": "user", "content": "colours?"}],
                       "max_tokens": 16, "temperature": temperature, "peer_tier": "verified"}).encode()
    chat = parse_chat_request(body, default_tier="verified", default_max_tokens=16, max_tokens_limit=1024)
    job = job_create(user=user, chat=chat, entry=entry)
    job_start(job_id=job.id, worker_id=worker.id, model_digest=entry.digests[0], price_per_token=100)
    Worker.objects.filter(id=worker.id).update(status="idle", current_job_id=None)  # its consumer's release
    job = Job.objects.get(id=job.id)
    signature = commitment_sign(key, commitment_hash(commitment_inputs(
        model_id=job.served_model, model_digest=job.model_digest, seed=job.params["seed"], params=job.params,
        prompt=job.prompt_text(), output=output)))
    return job_complete(job_id=job.id, output_text=output, finish_reason="stop", model_digest=job.model_digest,
                        signature=signature)


def validator_answers(validation_id, *, output, logprobs, end=-0.1, digest=None, fit=None):
    """A validator's turn: claimed, then its validate.done recorded (and its consumer's release).
    `fit`: its sampled_fit, for a sampled job (docs/verification.md, "Sampled answers")."""
    assignment = validator_claim(validation_id=validation_id)
    assert assignment is not None
    job = Job.objects.get(id=assignment.job_id)
    follow_up = validation_record(validation_id=validation_id, worker_id=assignment.worker_id, done={
        "model_digest": digest or job.model_digest, "output": output, "finish_reason": "stop",
        "token_logprobs": logprobs, "end_logprob": end, **({"sampled_fit": fit} if fit else {})})
    Worker.objects.filter(id=assignment.worker_id).update(status="idle", current_job_id=None)
    return assignment, follow_up
