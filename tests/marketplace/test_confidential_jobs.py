"""Confidential requests and their money (apps/marketplace/requests.py, confidential.py): the node
parses only what travels in the clear, holds for the bound a sealed request implies, and charges
the enclave's counts within those bounds. The ledger check (tests/conftest.py) runs after each."""

import json

import pytest

from apps.credits.pricing import job_price
from apps.credits.selectors import balance_get, held_get
from apps.credits.services import credits_grant
from apps.marketplace.confidential import sealed_job_complete, sealed_job_create
from apps.marketplace.demo import catalogue_seed_builtin
from apps.marketplace.errors import ApiError
from apps.marketplace.models import Job
from apps.marketplace.requests import parse_sealed_chat_request, requested_tier
from apps.marketplace.services import job_fail, job_start
from apps.workers.models import CatalogueModel
from apps.workers.services import worker_register
from client.sealing import REQUEST_INFO, keypair, seal

ENCLAVE_KEY = keypair()[1]
REPLY_KEY = keypair()[1]
BODY = json.dumps({"model": "gemma-3-270m", "messages": [{"role": "user", "content": "a secret"}]}).encode()


def sealed_body(**overrides):
    body = {"model": "gemma-3-270m", "max_tokens": 16, "peer_tier": "confidential",
            "peer_sealed": {"enclave_key": ENCLAVE_KEY, "reply_key": REPLY_KEY,
                            "request": seal(ENCLAVE_KEY, BODY, info=REQUEST_INFO)}}
    body.update(overrides)
    return json.dumps(body).encode()


def parse(raw):
    return parse_sealed_chat_request(raw, default_max_tokens=16, max_tokens_limit=1024)


def test_a_sealed_request_keeps_only_the_clear_fields_and_bounds_its_prompt():
    chat = parse(sealed_body(temperature=0, seed=7, stream=True))

    assert chat.tier == "confidential" and chat.messages == [] and chat.stop == []
    assert chat.sealed["enclave_key"] == ENCLAVE_KEY and chat.prompt_text() == ""
    assert chat.sealed_size == len(BODY)  # the plaintext's length, the ciphertext less its tag
    assert (chat.max_tokens, chat.seed, chat.stream) == (16, 7, True)
    assert requested_tier(sealed_body(), default_tier="verified") == "confidential"


@pytest.mark.parametrize("field", ["messages", "prompt", "stop", "tools"])
def test_content_in_the_clear_is_refused(field):
    with pytest.raises(ApiError) as refused:
        parse(sealed_body(**{field: [{"role": "user", "content": "leak"}]}))

    assert refused.value.body()["error"]["code"] == "plaintext_in_confidential_request"
    assert refused.value.body()["error"]["param"] == field


@pytest.mark.parametrize("peer_sealed, param", [
    (None, "peer_sealed"),
    ({"enclave_key": ENCLAVE_KEY, "reply_key": REPLY_KEY}, "peer_sealed"),
    ({"enclave_key": "short", "reply_key": REPLY_KEY, "request": {}}, "peer_sealed.enclave_key"),
    ({"enclave_key": ENCLAVE_KEY, "reply_key": 3, "request": {}}, "peer_sealed.reply_key"),
    ({"enclave_key": ENCLAVE_KEY, "reply_key": REPLY_KEY, "request": {"hpke": "x"}}, "peer_sealed.request"),
    ({"enclave_key": ENCLAVE_KEY, "reply_key": REPLY_KEY,
      "request": {"hpke": "X25519-HKDF-SHA256/HKDF-SHA256/ChaCha20Poly1305", "enc": "AA==", "ciphertext": "AA=="}},
     "peer_sealed.request"),
], ids=["missing", "no request", "bad enclave key", "reply key not text", "not an envelope", "short enc"])
def test_a_malformed_sealed_request_is_a_clear_400(peer_sealed, param):
    with pytest.raises(ApiError) as refused:
        parse(sealed_body(peer_sealed=peer_sealed))

    assert refused.value.status == 400 and refused.value.body()["error"]["param"] == param


@pytest.fixture
def running(alice, bob, db):
    catalogue_seed_builtin()
    entry = CatalogueModel.objects.get(name="gemma-3-270m")
    credits_grant(user=alice, credits=100)
    worker = worker_register(operator=bob, name="enclave", tiers=["confidential"])[0]
    job = sealed_job_create(user=alice, chat=parse(sealed_body()), entry=entry)
    assert job_start(job_id=job.id, worker_id=worker.id, model_digest=entry.digests[0], price_per_token=100)
    return Job.objects.get(id=job.id)


def _price(job, prompt_tokens, completion_tokens):
    return job_price(base=250_000, per_token=100, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def test_the_hold_covers_the_bound_and_the_node_stores_no_plaintext(alice, running):
    assert running.prompt_tokens == len(BODY) and running.messages == [] and running.raw_prompt is None
    assert running.hold_amount >= _price(running, len(BODY), 16)
    assert held_get(user=alice) == running.hold_amount
    assert b"a secret" not in json.dumps(running.sealed).encode()


def test_the_charge_is_the_enclaves_count_within_the_bounds(alice, running):
    before = balance_get(user=alice) + held_get(user=alice)

    job = sealed_job_complete(job_id=running.id, finish_reason="stop", model_digest=running.model_digest,
                              usage={"prompt_tokens": 10**6, "completion_tokens": 10**6}, pieces=3,
                              enclave_signature="c2ln", attestation={"kind": "simulated"})

    # Claimed counts above the bounds are cut to them: the prompt's byte length, max_tokens.
    assert (job.prompt_tokens, job.completion_tokens) == (len(BODY), 16)
    assert job.charged_amount == min(job.hold_amount, _price(job, len(BODY), 16))
    assert balance_get(user=alice) == before - job.charged_amount and held_get(user=alice) == 0
    assert job.commitment["enclave_signature"] == "c2ln" and job.commitment["kind"] == "enclave"


def test_fewer_tokens_than_pieces_relayed_is_not_believed(running):
    job = sealed_job_complete(job_id=running.id, finish_reason="stop", model_digest=running.model_digest,
                              usage={"prompt_tokens": 5, "completion_tokens": 1}, pieces=4,
                              enclave_signature="c2ln", attestation=None)

    assert (job.prompt_tokens, job.completion_tokens) == (5, 4)
    assert job.charged_amount == _price(job, 5, 4)


def test_a_cancelled_answer_pays_the_prompt_bound_and_a_token_per_piece_delivered(running):
    job = sealed_job_complete(job_id=running.id, finish_reason="cancelled", model_digest=running.model_digest,
                              usage=None, pieces=2, enclave_signature=None, attestation=None)

    assert (job.prompt_tokens, job.completion_tokens, job.finish_reason) == (len(BODY), 2, "cancelled")
    assert job.commitment["usage_source"] == "pieces relayed"


def test_a_failed_confidential_job_is_refunded_in_full(alice, running):
    before = balance_get(user=alice) + held_get(user=alice)

    job = job_fail(job_id=running.id, code="enclave_unavailable", message="gone")

    assert job.charged_amount == 0 and balance_get(user=alice) == before and held_get(user=alice) == 0
