"""Sampling, validators and verdicts on the real database: the honest are never slashed, a
proven fault is slashed once (the burned supply falls by the right amount), validators are of
other operators and are paid, a validator that never answers is replaced."""

import pytest
from django.utils import timezone

from apps.credits.services import worker_account
from apps.marketplace.models import Job
from apps.staking.models import Slash
from apps.staking.selectors import peer_supply, worker_bond_get
from apps.verification.models import Validation
from apps.verification.resume import validations_resume
from apps.verification.services import jobs_sample, validation_attempt_failed, validator_claim, verdict_apply
from apps.workers.models import Worker
from apps.workers.selectors import workers_eligible

from .support import ANSWER, CHEAT_LOGPROBS, HONEST_LOGPROBS, make_worker, validator_answers, verified_job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("funded_treasury")]


def test_a_verified_answer_awaits_the_draw_and_the_draw_follows_the_rate(alice, bob, carol, entry, settings):
    worker, key = make_worker(bob, entry, "w", bonded=True)
    settings.PEER_VERIFY_SAMPLE_RATE = {"verified": 1.0}
    job = verified_job(alice, worker, key, entry)
    assert job.verification_status == "awaiting"
    drawn = jobs_sample()
    assert [Validation.objects.get(id=v).job_id for v in drawn] == [job.id]
    assert Job.objects.get(id=job.id).verification_status == "pending"
    settings.PEER_VERIFY_SAMPLE_RATE, settings.PEER_VERIFY_SAMPLE_RATE_MAX = {"verified": 0.0}, 0.0
    other = verified_job(alice, worker, key, entry)
    assert jobs_sample() == [] and Job.objects.get(id=other.id).verification_status == "not_sampled"
    assert jobs_sample() == []  # each job is drawn for once


def test_an_honest_worker_is_never_slashed_over_many_sampled_jobs(alice, bob, carol, entry, settings):
    settings.PEER_VERIFY_SAMPLE_RATE = {"verified": 1.0}
    worker, key = make_worker(bob, entry, "honest", bonded=True)
    validator, _ = make_worker(carol, entry, "validator")
    reputation = Worker.objects.get(id=worker.id).reputation
    for _ in range(12):
        verified_job(alice, worker, key, entry)
    for validation_id in jobs_sample():
        assignment, follow_up = validator_answers(validation_id, output=ANSWER, logprobs=HONEST_LOGPROBS)
        assert assignment.worker_id == validator.id and follow_up is None
    assert set(Job.objects.filter(worker=worker).values_list("verification_status", flat=True)) == {"passed"}
    assert not Slash.objects.exists() and worker_bond_get(worker=worker) == settings.PEER_VERIFIED_BOND
    assert Worker.objects.get(id=worker.id).reputation > reputation
    # Paid per re-execution: 70% of each job's price, from the treasury.
    prices = sum(Job.objects.filter(worker=worker).values_list("charged_amount", flat=True))
    assert worker_account(worker=validator).balance == prices * 70 // 100
    assert Validation.objects.filter(paid=True).count() == 12


def test_a_plausible_greedy_answer_that_differs_passes(alice, bob, carol, entry, settings):
    settings.PEER_VERIFY_SAMPLE_RATE = {"verified": 1.0}
    worker, key = make_worker(bob, entry, "w", bonded=True)
    make_worker(carol, entry, "v")
    job = verified_job(alice, worker, key, entry)
    [validation_id] = jobs_sample()
    validator_answers(validation_id, output="Red, yellow, and blue.", logprobs=HONEST_LOGPROBS)
    assert Job.objects.get(id=job.id).verification_status == "passed"
    assert Validation.objects.get(id=validation_id).outcome == "plausible"


def test_a_cheater_is_slashed_once_after_a_second_validator_confirms(alice, bob, carol, mallory, entry, settings):
    settings.PEER_VERIFY_SAMPLE_RATE = {"verified": 1.0}
    cheater, key = make_worker(mallory, entry, "cheater", bonded=True)
    first, _ = make_worker(carol, entry, "first")
    second, _ = make_worker(bob, entry, "second")
    job = verified_job(alice, cheater, key, entry, output="The capital of France is Paris.")
    supply = peer_supply()
    [validation_id] = jobs_sample()
    # Carol's and Bob's workers may come in either order; the other one confirms.
    assignment, confirming = validator_answers(validation_id, output=ANSWER, logprobs=CHEAT_LOGPROBS)
    assert confirming is not None and confirming.reason == "confirmation" and confirming.round == 2
    assert Job.objects.get(id=job.id).verification_status == "pending" and not Slash.objects.exists()
    confirmation, _ = validator_answers(confirming.id, output=ANSWER, logprobs=CHEAT_LOGPROBS)
    assert {assignment.worker_id, confirmation.worker_id} == {first.id, second.id}

    slash = Slash.objects.get()
    amount = settings.PEER_SLASH_AMOUNT
    assert (slash.worker_id, slash.amount) == (cheater.id, amount)
    # Half to the operator of the validator that found it, the rest burned: supply falls by that.
    finder = Worker.objects.get(id=assignment.worker_id).operator
    assert slash.challenger_id == finder.id and slash.to_challenger == amount * 50 // 100
    after = peer_supply()
    assert after["burned"] - supply["burned"] == amount - slash.to_challenger
    assert after["circulating"] == supply["circulating"] - (amount - slash.to_challenger)
    assert worker_bond_get(worker=cheater) == settings.PEER_VERIFIED_BOND - amount
    assert Job.objects.get(id=job.id).verification_status == "failed"
    reputation = Worker.objects.get(id=cheater.id).reputation
    assert reputation < 0.3
    # Demoted: below the bond and reputation floors, off the verified tier (still on open).
    assert cheater.id not in [w.id for w, _ in workers_eligible(entry=entry, tier="verified")]
    assert cheater.id in [w.id for w, _ in workers_eligible(entry=entry, tier="open")]

    # Applying the verdict again, or resuming, slashes nothing more and lowers nothing more.
    assert verdict_apply(validation_id=confirming.id) is None
    validations_resume()
    assert Slash.objects.count() == 1 and worker_bond_get(worker=cheater) == settings.PEER_VERIFIED_BOND - amount
    assert Worker.objects.get(id=cheater.id).reputation == reputation


def test_a_second_validator_that_agrees_with_the_worker_clears_it(alice, bob, carol, mallory, entry, settings):
    settings.PEER_VERIFY_SAMPLE_RATE = {"verified": 1.0}
    worker, key = make_worker(bob, entry, "w", bonded=True)
    make_worker(carol, entry, "v1")
    make_worker(mallory, entry, "v2")
    job = verified_job(alice, worker, key, entry)
    [validation_id] = jobs_sample()
    _, confirming = validator_answers(validation_id, output="Something else entirely.", logprobs=CHEAT_LOGPROBS)
    validator_answers(confirming.id, output=ANSWER, logprobs=HONEST_LOGPROBS)
    assert Job.objects.get(id=job.id).verification_status == "passed" and not Slash.objects.exists()


@pytest.mark.parametrize(("second", "verdict"), [("match", "passed"), ("mismatch", "undecided"),
                                                ("inconclusive", "undecided")])
def test_a_sampled_answer_no_validator_reproduces_is_never_slashed(alice, bob, carol, mallory, entry, settings,
                                                                   second, verdict):
    """At temperature > 0 a validator with other numerics diverges honestly: a differing answer
    is inconclusive; a second validator may reproduce it (passed), else it stays undecided."""
    settings.PEER_VERIFY_SAMPLE_RATE = {"verified": 1.0}
    worker, key = make_worker(bob, entry, "w", bonded=True)
    make_worker(carol, entry, "v1")
    make_worker(mallory, entry, "v2")
    job = verified_job(alice, worker, key, entry, temperature=0.7)
    [validation_id] = jobs_sample()
    _, confirming = validator_answers(validation_id, output="Blue, green and red.", logprobs=HONEST_LOGPROBS)
    assert Validation.objects.get(id=validation_id).outcome == "inconclusive" and confirming is not None
    # "mismatch": the validator's run goes on where the answer claims to stop (cut short).
    answers = {"match": (ANSWER, HONEST_LOGPROBS), "mismatch": (ANSWER + " And green.", CHEAT_LOGPROBS),
               "inconclusive": ("Cyan.", HONEST_LOGPROBS)}[second]
    validator_answers(confirming.id, output=answers[0], logprobs=answers[1])
    assert Validation.objects.get(id=confirming.id).outcome == second
    assert Job.objects.get(id=job.id).verification_status == verdict and not Slash.objects.exists()


def test_a_sampled_substitute_that_does_not_fit_the_models_samples_is_slashed_once(
        alice, bob, carol, mallory, entry, settings):
    """At temperature > 0 the validators cannot reproduce the text, but the claimed tokens'
    fit to the model's samples (z far below 0, as the cached substitute at 0.7 measured -6.8)
    is evidence; two such runs prove the fault. An honest divergence (z near 0) is no evidence:
    undecided, nobody slashed."""
    settings.PEER_VERIFY_SAMPLE_RATE = {"verified": 1.0}
    cheater, key = make_worker(mallory, entry, "cheater", bonded=True)
    make_worker(carol, entry, "first")
    make_worker(bob, entry, "second")
    job = verified_job(alice, cheater, key, entry, output="I am sure the answer is forty-two.", temperature=0.7)
    unfit = {"tokens": 9, "excess": -9.2, "variance": 1.8}  # z = -6.9
    supply = peer_supply()
    [validation_id] = jobs_sample()
    _, confirming = validator_answers(validation_id, output="Blue, green and red.", logprobs=CHEAT_LOGPROBS, fit=unfit)
    assert Validation.objects.get(id=validation_id).outcome == "mismatch" and confirming is not None
    validator_answers(confirming.id, output="Red, yellow and blue.", logprobs=CHEAT_LOGPROBS, fit=unfit)
    slash = Slash.objects.get()
    assert (slash.worker_id, slash.amount) == (cheater.id, settings.PEER_SLASH_AMOUNT)
    after = peer_supply()  # what was not paid to the finder is burned: nothing else moved
    assert after["burned"] - supply["burned"] == slash.amount - slash.to_challenger == slash.burned
    assert after["circulating"] == supply["circulating"] - slash.burned
    assert Job.objects.get(id=job.id).verification_status == "failed"
    assert verdict_apply(validation_id=confirming.id) is None and Slash.objects.count() == 1

    honest_worker, honest_key = make_worker(alice, entry, "honest", bonded=True)
    honest = verified_job(bob, honest_worker, honest_key, entry, output="Cyan, magenta and yellow.", temperature=0.7)
    [validation_id] = jobs_sample()
    honest_fit = {"tokens": 9, "excess": 0.4, "variance": 1.8}
    _, confirming = validator_answers(validation_id, output="Red, yellow and blue.", logprobs=HONEST_LOGPROBS,
                                      fit=honest_fit)
    assert Validation.objects.get(id=validation_id).outcome == "inconclusive"
    validator_answers(confirming.id, output="Blue and red.", logprobs=HONEST_LOGPROBS, fit=honest_fit)
    assert Job.objects.get(id=honest.id).verification_status == "undecided" and Slash.objects.count() == 1


def test_no_validator_of_the_same_operator_or_without_the_digest_is_ever_chosen(alice, bob, carol, entry, settings):
    settings.PEER_VERIFY_SAMPLE_RATE = {"verified": 1.0}
    worker, key = make_worker(bob, entry, "w", bonded=True)
    make_worker(bob, entry, "bobs-other-worker")  # same operator
    demoted, _ = make_worker(carol, entry, "proven-cheater")  # below the verified floor: vouches for nobody
    Worker.objects.filter(id=demoted.id).update(reputation=settings.PEER_VERIFIED_REPUTATION_FLOOR - 0.05,
                                                reputation_updated_at=timezone.now())
    other_digest, _ = make_worker(carol, entry, "other-digest")
    Worker.objects.filter(id=other_digest.id).update(models_served=[
        {"id": entry.served_model, "digest": "sha256:" + "0" * 64, "validates": True}])
    make_worker(carol, entry, "cannot-score", validates=False)
    job = verified_job(alice, worker, key, entry)
    [validation_id] = jobs_sample()
    assert validator_claim(validation_id=validation_id) is None
    assert Validation.objects.get(id=validation_id).state == "pending"
    assert Job.objects.get(id=job.id).verification_status == "pending"
    assert set(Worker.objects.values_list("status", flat=True)) == {"idle"}  # nobody was claimed


def test_a_validator_that_never_answers_is_released_and_replaced_then_the_job_is_undecided(
        alice, bob, carol, mallory, entry, settings):
    settings.PEER_VERIFY_SAMPLE_RATE, settings.PEER_VERIFY_MAX_ATTEMPTS = {"verified": 1.0}, 2
    worker, key = make_worker(bob, entry, "w", bonded=True)
    make_worker(carol, entry, "v1")
    make_worker(mallory, entry, "v2")
    job = verified_job(alice, worker, key, entry)
    [validation_id] = jobs_sample()
    tried = []
    for _ in range(2):
        assignment = validator_claim(validation_id=validation_id)
        assert assignment.worker_id not in tried
        assert Worker.objects.get(id=assignment.worker_id).status == "busy"
        validation_attempt_failed(validation_id=validation_id, worker_id=assignment.worker_id,
                                  why="worker_disconnected: gone")
        assert Worker.objects.get(id=assignment.worker_id).status == "idle"
        tried.append(assignment.worker_id)
    validation = Validation.objects.get(id=validation_id)
    assert validation.state == "undecided" and len(validation.validators_tried) == 2
    assert Job.objects.get(id=job.id).verification_status == "undecided"
    assert not Slash.objects.exists() and worker_account(worker=Worker.objects.get(id=tried[0])).balance == 0


def test_an_answer_for_another_digest_does_not_count(alice, bob, carol, entry, settings):
    settings.PEER_VERIFY_SAMPLE_RATE = {"verified": 1.0}
    worker, key = make_worker(bob, entry, "w", bonded=True)
    make_worker(carol, entry, "v")
    verified_job(alice, worker, key, entry)
    [validation_id] = jobs_sample()
    validator_answers(validation_id, output="x", logprobs=CHEAT_LOGPROBS, digest="sha256:" + "1" * 64)
    validation = Validation.objects.get(id=validation_id)
    assert validation.state == "pending" and validation.outcome == "" and not Slash.objects.exists()
