"""Embedding jobs' money: the node counts the tokens with the model's own tokenizer.json, holds
the quote, captures at the serving worker's price and splits it, or refunds all of it."""

import json

import pytest
from django.conf import settings
from tokenizers import Tokenizer

from apps.credits.pricing import credits_to_micro, split_capture
from apps.credits.selectors import balance_get, held_get, transactions_for_reference
from apps.credits.services import credits_grant
from apps.marketplace.demo import EMBEDDING_NAME, catalogue_seed_builtin, catalogue_seed_embeddings
from apps.marketplace.errors import ApiError
from apps.marketplace.requests import parse_embedding_request
from apps.marketplace.services import (
    InsufficientCredits,
    embed_job_complete,
    embed_job_create,
    embedding_quote,
    job_fail,
    job_start,
)
from apps.marketplace.vectors import inputs_text
from apps.workers.models import CatalogueModel
from apps.workers.services import worker_register
from worker.backends import minilm
from worker.commitment import commitment_hash, sha256_hex

pytestmark = pytest.mark.django_db
TEXTS = ["A man is eating food.", "Ein Mann isst.", "Quantum chromodynamics describes the strong force."]


def _request(**overrides):
    body = {"model": EMBEDDING_NAME, "input": TEXTS, **overrides}
    return parse_embedding_request(json.dumps(body).encode(), default_tier="verified")


@pytest.fixture
def entry():
    assert catalogue_seed_embeddings() is not None, "the minilm packages are part of the install"
    return CatalogueModel.objects.get(name=EMBEDDING_NAME)


def _reference_tokens(texts):
    """The same count from a tokenizer loaded here: the caller's tokens, without [CLS] and [SEP]."""
    tokenizer = Tokenizer.from_file(str(minilm.model_files()[1]))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return [len(tokenizer.encode(text, add_special_tokens=False).ids) for text in texts]


def test_the_seeded_entry_is_the_agents_model_with_its_digest_kind_and_dimensions(entry):
    info = minilm.model_info()

    assert "minilm" in entry.name and entry.kind == "embedding" and entry.dimensions == 384
    assert entry.served_model == info.id and entry.digests == [info.digest]
    assert entry.is_served_by(info.announce())
    # The same id and digest announced as a chat model does not serve it, nor the reverse.
    assert not entry.is_served_by({**info.announce(), "kind": "chat"})


def test_the_quote_counts_every_inputs_tokens_with_the_models_tokenizer(entry):
    quote = embedding_quote(embedding=_request(), entry=entry)

    assert quote.prompt_tokens == sum(_reference_tokens(TEXTS)) and quote.usage_source == "tokenizer"
    assert quote.price_ceiling == settings.PEER_PRICE_PER_TOKEN
    assert quote.amount == settings.PEER_EMBEDDING_BASE_PRICE["verified"] + quote.prompt_tokens * quote.price_ceiling


def test_an_input_longer_than_the_models_window_is_refused_not_cut(entry):
    fits = " ".join(["word"] * (minilm.MAX_TOKENS - 2))
    assert _reference_tokens([fits]) == [minilm.MAX_TOKENS - 2]
    embedding_quote(embedding=_request(input=[fits]), entry=entry)

    with pytest.raises(ApiError) as caught:
        embedding_quote(embedding=_request(input=["short", fits + " word"]), entry=entry)
    assert caught.value.status == 400 and caught.value.code == "context_length_exceeded"
    assert "input[1] is 255 tokens" in caught.value.message


def test_dimensions_other_than_the_models_own_are_refused(entry):
    assert embedding_quote(embedding=_request(dimensions=384), entry=entry).prompt_tokens > 0
    with pytest.raises(ApiError) as caught:
        embedding_quote(embedding=_request(dimensions=256), entry=entry)
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, "dimensions", "unsupported_dimensions")


def test_a_chat_model_cannot_embed(entry):
    catalogue_seed_builtin()
    chat = CatalogueModel.objects.get(name="gemma-3-270m")

    with pytest.raises(ApiError) as caught:
        embedding_quote(embedding=_request(model="gemma-3-270m"), entry=chat)
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, "model", "unsupported_model")


def test_the_quote_is_held_then_captured_at_the_workers_price_and_split(alice, bob, entry):
    credits_grant(user=alice, credits=100)
    worker, _ = worker_register(operator=bob, name="bob-cpu-1", tiers=["verified"])
    before = balance_get(user=alice)

    job = embed_job_create(user=alice, embedding=_request(), entry=entry)
    assert held_get(user=alice) == job.hold_amount and balance_get(user=alice) == before - job.hold_amount
    assert (job.kind, job.inputs, job.prompt_sha256) == ("embedding", TEXTS, sha256_hex(inputs_text(TEXTS)))

    assert job_start(job_id=job.id, worker_id=worker.id, model_digest=entry.digests[0], price_per_token=40)
    vectors = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    job = embed_job_complete(job_id=job.id, vectors=vectors, model_digest=entry.digests[0])

    charge = settings.PEER_EMBEDDING_BASE_PRICE["verified"] + 40 * job.prompt_tokens
    assert (job.status, job.hold_state, job.charged_amount) == ("completed", "captured", charge)
    assert balance_get(user=alice) == before - charge and held_get(user=alice) == 0
    hold, capture = transactions_for_reference(reference=job.reference)
    assert (hold.kind, capture.kind) == ("hold", "capture")
    legs = {entry.account.code: entry.amount for entry in capture.entries.all()}
    assert legs[f"worker:{worker.id}:USDC"] == split_capture(charge).worker
    assert job.commitment["hash"] == commitment_hash(job.commitment["inputs"])
    assert job.commitment["inputs"]["prompt_sha256"] == job.prompt_sha256
    # Settling again changes nothing.
    assert embed_job_complete(job_id=job.id, vectors=vectors, model_digest=entry.digests[0]).charged_amount == charge
    assert balance_get(user=alice) == before - charge


def test_a_failed_embedding_job_refunds_the_whole_hold(alice, entry):
    credits_grant(user=alice, credits=100)
    before = balance_get(user=alice)
    job = embed_job_create(user=alice, embedding=_request(), entry=entry)

    job = job_fail(job_id=job.id, code="worker_failed", message="gone")

    assert (job.status, job.hold_state, job.charged_amount) == ("failed", "released", 0)
    assert balance_get(user=alice) == before and held_get(user=alice) == 0


def test_without_enough_credits_nothing_is_held_or_written(alice, entry, settings):
    settings.PEER_EMBEDDING_BASE_PRICE = {**settings.PEER_EMBEDDING_BASE_PRICE, "verified": credits_to_micro(1)}
    credits_grant(user=alice, credits=1)  # exactly the base price: the inputs' tokens do not fit

    with pytest.raises(InsufficientCredits) as caught:
        embed_job_create(user=alice, embedding=_request(), entry=entry)

    assert caught.value.available == credits_to_micro(1) and caught.value.price > credits_to_micro(1)
    assert held_get(user=alice) == 0 and not alice.jobs.exists()
