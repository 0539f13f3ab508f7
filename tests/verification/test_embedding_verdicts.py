"""Verified embedding jobs on the real database: signed chunks put them in the draw, validators of
other operators serving the digest re-embed them chunk by chunk, honest vectors pass, a cheater's
are slashed once after a second validator confirms, as is one a challenge finds; the proof carries
every signed chunk."""

import json

import pytest
from django.test import Client

from apps.accounts.services import api_key_issue
from apps.credits.selectors import balance_get, held_get
from apps.credits.services import worker_account
from apps.marketplace.demo import EMBEDDING_NAME, catalogue_seed_embeddings
from apps.marketplace.models import Job
from apps.marketplace.presenters import peer_object
from apps.staking.models import Slash
from apps.staking.selectors import peer_supply, worker_bond_get
from apps.verification.challenges import ChallengeRefused, challenge_open
from apps.verification.models import Validation
from apps.verification.resume import validations_resume
from apps.verification.services import jobs_sample, validator_claim, verdict_apply
from apps.workers.models import CatalogueModel, Worker
from worker.embedding_commitment import embedding_proof_problems

from .embedding_support import TEXTS, make_embedder, validator_embeds, vectors_for, verified_embedding_job
from .support import make_worker

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("funded_treasury")]


@pytest.fixture
def embedding_entry(db):
    assert catalogue_seed_embeddings() is not None
    return CatalogueModel.objects.get(name=EMBEDDING_NAME)


@pytest.fixture(autouse=True)
def _sample_everything(settings):
    settings.PEER_VERIFY_SAMPLE_RATE = {"verified": 1.0}


def test_a_signed_verified_embedding_job_awaits_the_draw_and_keeps_its_vectors(alice, bob, embedding_entry):
    worker, key = make_embedder(bob, embedding_entry, "w", bonded=True)
    job = verified_embedding_job(alice, worker, key, embedding_entry)
    assert job.verification_status == "awaiting" and len(job.commitment["chunks"]) == 2
    assert [c["inputs"]["count"] for c in job.commitment["chunks"]] == [32, 8]
    assert embedding_proof_problems({"worker_public_key": worker.signing_key, "commitment": job.commitment},
                                    vectors=vectors_for(TEXTS), texts=TEXTS) == []
    peer = peer_object(job)
    assert peer["commitment"]["chunks"] == job.commitment["chunks"]
    assert peer["commitment"]["worker_public_key"] == worker.signing_key
    # The open tier is never drawn for, and keeps no vectors.
    open_job = verified_embedding_job(alice, worker, key, embedding_entry, tier="open")
    assert open_job.verification_status == "" and open_job.output_text == ""


def test_an_honest_embedder_is_never_slashed_over_many_sampled_jobs(alice, bob, carol, embedding_entry, settings):
    worker, key = make_embedder(bob, embedding_entry, "honest", bonded=True)
    validator, _ = make_embedder(carol, embedding_entry, "validator")
    reputation = Worker.objects.get(id=worker.id).reputation
    for _ in range(8):
        verified_embedding_job(alice, worker, key, embedding_entry)
    # Other numerics: every number a float32 step or so away (1 - cos far below 1e-9).
    honest_variation = [[x * (1 + 1e-7) for x in v] for v in vectors_for(TEXTS)]
    outcomes = []
    for n, validation_id in enumerate(jobs_sample()):
        assignment, follow_up = validator_embeds(
            validation_id, vectors=vectors_for(TEXTS) if n % 2 else honest_variation)
        assert assignment.worker_id == validator.id and follow_up is None
        assert Worker.objects.get(id=validator.id).status == "idle"  # released after its last chunk
        outcomes.append(Validation.objects.get(id=validation_id).outcome)
    assert sorted(set(outcomes)) == ["match", "plausible"]
    assert set(Job.objects.filter(worker=worker).values_list("verification_status", flat=True)) == {"passed"}
    assert not Slash.objects.exists() and worker_bond_get(worker=worker) == settings.PEER_VERIFIED_BOND
    assert Worker.objects.get(id=worker.id).reputation > reputation
    prices = sum(Job.objects.filter(worker=worker).values_list("charged_amount", flat=True))
    assert worker_account(worker=validator).balance == prices * 70 // 100


def test_a_cheating_embedder_is_slashed_once_after_a_second_validator_confirms(
        alice, bob, carol, mallory, embedding_entry, settings):
    cheater, key = make_embedder(mallory, embedding_entry, "cheater", bonded=True)
    first, _ = make_embedder(carol, embedding_entry, "first")
    second, _ = make_embedder(bob, embedding_entry, "second")
    job = verified_embedding_job(alice, cheater, key, embedding_entry, vectors=vectors_for(TEXTS, shift=3.0))
    supply = peer_supply()
    [validation_id] = jobs_sample()
    assignment, confirming = validator_embeds(validation_id, vectors=vectors_for(TEXTS))
    assert confirming is not None and confirming.round == 2 and not Slash.objects.exists()
    assert "cosine similarity" in Validation.objects.get(id=validation_id).detail
    confirmation, _ = validator_embeds(confirming.id, vectors=vectors_for(TEXTS))
    assert {assignment.worker_id, confirmation.worker_id} == {first.id, second.id}

    slash = Slash.objects.get()
    assert (slash.worker_id, slash.amount) == (cheater.id, settings.PEER_SLASH_AMOUNT)
    assert peer_supply()["burned"] - supply["burned"] == slash.amount - slash.to_challenger
    assert Job.objects.get(id=job.id).verification_status == "failed"
    assert Validation.objects.get(id=validation_id).lowest_similarity < 0.999
    # Again, or resumed: nothing more.
    verdict_apply(validation_id=confirming.id)
    validations_resume()
    assert Slash.objects.count() == 1
    assert worker_bond_get(worker=cheater) == settings.PEER_VERIFIED_BOND - settings.PEER_SLASH_AMOUNT


def test_no_validator_of_the_same_operator_or_another_model_or_a_cheater_is_chosen(
        alice, bob, carol, mallory, embedding_entry, entry):
    worker, key = make_embedder(bob, embedding_entry, "w", bonded=True)
    make_embedder(bob, embedding_entry, "bobs-other-embedder")  # same operator
    make_worker(carol, entry, "carols-chat-validator")  # validates the chat model only
    make_embedder(mallory, embedding_entry, "mallory-cheats", validates=False)  # a --cheat agent's hello
    job = verified_embedding_job(alice, worker, key, embedding_entry)
    [validation_id] = jobs_sample()
    assert validator_claim(validation_id=validation_id) is None
    assert Job.objects.get(id=job.id).verification_status == "pending"
    assert set(Worker.objects.values_list("status", flat=True)) == {"idle"}


@pytest.mark.django_db(transaction=True)  # the view is async: it sees committed rows only
def test_the_proof_of_an_embedding_job_lists_its_signed_chunks_and_the_workers_key(alice, bob, embedding_entry):
    worker, key = make_embedder(bob, embedding_entry, "w", bonded=True)
    job = verified_embedding_job(alice, worker, key, embedding_entry)
    _, api_key = api_key_issue(user=alice)
    proof = json.loads(Client().get(f"/v1/jobs/{job.id}/proof", HTTP_AUTHORIZATION=f"Bearer {api_key}").content)
    assert proof["worker_public_key"] == worker.signing_key
    assert proof["commitment"]["chunks"] == job.commitment["chunks"]
    assert proof["verification"]["status"] == "awaiting"
    assert embedding_proof_problems(proof, vectors=vectors_for(TEXTS), texts=TEXTS) == []


def test_a_challenge_of_a_cheating_embedders_job_is_upheld_and_slashes_once(
        alice, bob, carol, mallory, embedding_entry, settings):
    settings.PEER_VERIFY_SAMPLE_RATE, settings.PEER_VERIFY_SAMPLE_RATE_MAX = {"verified": 0.0}, 0.0
    cheater, key = make_embedder(mallory, embedding_entry, "cheater", bonded=True)
    make_embedder(bob, embedding_entry, "v1")
    make_embedder(carol, embedding_entry, "v2")
    job = verified_embedding_job(alice, cheater, key, embedding_entry, vectors=vectors_for(TEXTS, shift=3.0))
    assert jobs_sample() == []  # not drawn: only the challenge checks it
    before = balance_get(user=alice)
    challenge, validation = challenge_open(user=alice, job_id=job.id)
    _, confirming = validator_embeds(validation.id, vectors=vectors_for(TEXTS))
    validator_embeds(confirming.id, vectors=vectors_for(TEXTS))
    challenge.refresh_from_db()
    assert challenge.state == "upheld" and balance_get(user=alice) == before and held_get(user=alice) == 0
    assert Slash.objects.get().challenger_id == alice.id
    with pytest.raises(ChallengeRefused):
        challenge_open(user=bob, job_id=job.id)
    assert Slash.objects.count() == 1
