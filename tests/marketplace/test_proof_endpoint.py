"""GET /v1/jobs/{id}/proof: the owner's, or anyone's with the job id when the owner made it public."""

import json

import pytest
from django.test import Client

from apps.accounts.services import api_key_issue
from apps.credits.services import credits_grant
from apps.marketplace.demo import catalogue_seed_builtin
from apps.marketplace.requests import parse_chat_request
from apps.marketplace.services import job_complete, job_create, job_start
from apps.workers.models import CatalogueModel
from apps.workers.services import worker_register

# The view is async: its database calls run in another thread, which sees only committed rows.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def entry():
    catalogue_seed_builtin()
    return CatalogueModel.objects.get(name="gemma-3-270m")


def _job(user, worker, entry, *, public=False, complete=True):
    credits_grant(user=user, credits=100)
    body = {"model": entry.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "peer_tier": "open", "peer_public_proof": public}
    chat = parse_chat_request(json.dumps(body).encode(), default_tier="verified", default_max_tokens=8,
                              max_tokens_limit=1024)
    job = job_create(user=user, chat=chat, entry=entry)
    job_start(job_id=job.id, worker_id=worker.id, model_digest=entry.digests[0], price_per_token=100)
    if complete:
        job_complete(job_id=job.id, output_text="Hello!", finish_reason="stop", model_digest=entry.digests[0])
    return job


def _get(job, key=None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
    return Client().get(f"/v1/jobs/{job.id}/proof", **headers)


def test_a_private_proof_is_for_its_owner_only(alice, bob, mallory, entry):
    worker = worker_register(operator=bob, name="w", tiers=["open"])[0]
    job = _job(alice, worker, entry)
    owner = _get(job, api_key_issue(user=alice)[1])
    assert owner.status_code == 200
    proof = owner.json()
    assert proof["object"] == "peer.proof" and proof["job_id"] == str(job.id)
    assert proof["commitment"]["hash"] == job.__class__.objects.get(id=job.id).commitment["hash"]
    assert proof["verification"] == {"status": "unsigned"}  # this open-tier worker had no key
    assert _get(job).status_code == 401
    stranger = _get(job, api_key_issue(user=mallory)[1])
    assert stranger.status_code == 404 and stranger.json()["error"]["code"] == "job_not_found"


def test_a_public_proof_is_for_anyone_with_the_job_id(alice, bob, entry):
    worker = worker_register(operator=bob, name="w", tiers=["open"])[0]
    assert _get(_job(alice, worker, entry, public=True)).status_code == 200


def test_a_job_without_a_commitment_has_no_proof_yet(alice, bob, entry):
    worker = worker_register(operator=bob, name="w", tiers=["open"])[0]
    running = _get(_job(alice, worker, entry, complete=False), api_key_issue(user=alice)[1])
    assert running.status_code == 409 and running.json()["error"]["code"] == "job_not_completed"
    # The refund of the job still holding credits happens in the reaper; the ledger stays sound.


def test_peer_public_proof_must_be_a_boolean():
    from apps.marketplace.errors import ApiError

    with pytest.raises(ApiError) as refused:
        parse_chat_request(json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                       "peer_public_proof": "yes"}).encode(),
                           default_tier="open", default_max_tokens=8, max_tokens_limit=1024)
    assert refused.value.param == "peer_public_proof"


def test_the_signed_in_owner_reads_a_private_proof_without_an_api_key(alice, bob, mallory, entry):
    worker = worker_register(operator=bob, name="w", tiers=["open"])[0]
    job = _job(alice, worker, entry)
    owner, stranger = Client(), Client()
    owner.force_login(alice)
    stranger.force_login(mallory)

    assert owner.get(f"/v1/jobs/{job.id}/proof").json()["job_id"] == str(job.id)
    assert stranger.get(f"/v1/jobs/{job.id}/proof").status_code == 404
    # A request with a key is judged by its key alone, whoever is signed in.
    assert owner.get(f"/v1/jobs/{job.id}/proof", HTTP_AUTHORIZATION="Bearer pc_nonsense").status_code == 401
