"""The worker's signed commitment, checked by the node when a job completes: a verified answer
settles only with a valid signature over the hash the node computed from what it relayed."""

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from apps.credits.selectors import balance_get, held_get
from apps.credits.services import credits_grant
from apps.marketplace.demo import catalogue_seed_builtin
from apps.marketplace.models import Job
from apps.marketplace.requests import parse_chat_request
from apps.marketplace.services import CommitmentRejected, job_complete, job_create, job_fail, job_start
from apps.workers.models import CatalogueModel, Worker
from apps.workers.services import worker_register
from worker.commitment import commitment_hash, commitment_inputs, commitment_sign, public_key_text

pytestmark = pytest.mark.django_db
KEY = Ed25519PrivateKey.generate()
OUTPUT = "Red, yellow and blue."


@pytest.fixture
def entry():
    catalogue_seed_builtin()
    return CatalogueModel.objects.get(name="gemma-3-270m")


def _running_job(alice, bob, entry, tier="verified", key=KEY) -> Job:
    credits_grant(user=alice, credits=100)
    worker = worker_register(operator=bob, name="signer", tiers=["open", "verified"])[0]
    Worker.objects.filter(id=worker.id).update(signing_key=public_key_text(key) if key else "")
    body = json.dumps({"model": entry.name, "messages": [{"role": "user", "content": "colours?"}],
                       "max_tokens": 16, "peer_tier": tier}).encode()
    chat = parse_chat_request(body, default_tier="verified", default_max_tokens=16, max_tokens_limit=1024)
    job = job_create(user=alice, chat=chat, entry=entry)
    assert job_start(job_id=job.id, worker_id=worker.id, model_digest=entry.digests[0], price_per_token=100)
    return Job.objects.get(id=job.id)


def _signed(job: Job, output: str, key=KEY) -> str:
    """What an honest agent sends: its signature over the commitment to what it generated."""
    commitment = commitment_hash(commitment_inputs(
        model_id=job.served_model, model_digest=job.model_digest, seed=job.params["seed"], params=job.params,
        prompt=job.prompt_text(), output=output))
    return commitment_sign(key, commitment)


def _complete(job, signature, output=OUTPUT):
    return job_complete(job_id=job.id, output_text=output, finish_reason="stop", model_digest=job.model_digest,
                        signature=signature)


def test_a_verified_answer_settles_with_the_workers_signature_recorded(alice, bob, entry):
    job = _running_job(alice, bob, entry)
    done = _complete(job, _signed(job, OUTPUT))
    assert done.hold_state == "captured"
    assert done.commitment["signature"] == _signed(job, OUTPUT)  # Ed25519 is deterministic
    assert done.commitment["worker_public_key"] == public_key_text(KEY)


@pytest.mark.parametrize("forgery", ["another key", "other output", "garbage", "none"])
def test_a_verified_answer_without_a_valid_signature_is_refused_and_refunded_in_full(alice, bob, entry, forgery):
    job = _running_job(alice, bob, entry)
    before = balance_get(user=alice) + held_get(user=alice)
    signature = {"another key": _signed(job, OUTPUT, key=Ed25519PrivateKey.generate()),
                 "other output": _signed(job, "Something else entirely."),
                 "garbage": "bm90IGEgc2lnbmF0dXJl", "none": None}[forgery]
    with pytest.raises(CommitmentRejected):
        _complete(job, signature)
    assert Job.objects.get(id=job.id).hold_state == "held"  # nothing settled by the refusal
    job_fail(job_id=job.id, code="commitment_rejected", message="refused")  # what the relay does next
    assert balance_get(user=alice) == before and held_get(user=alice) == 0


def test_an_open_answer_settles_unsigned_and_says_so(alice, bob, entry):
    job = _running_job(alice, bob, entry, tier="open", key=None)
    done = _complete(job, None)
    assert done.hold_state == "captured"
    assert done.commitment["signature"] is None and done.commitment["worker_public_key"] is None


def test_a_cancelled_verified_answer_is_charged_for_what_was_delivered_without_a_signature(alice, bob, entry):
    job = _running_job(alice, bob, entry)
    done = job_complete(job_id=job.id, output_text="Red,", finish_reason="cancelled", model_digest=job.model_digest)
    assert done.hold_state == "captured" and done.commitment["signature"] is None
