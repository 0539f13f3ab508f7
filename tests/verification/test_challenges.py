"""Open challenges: a bond of credits held within the window; re-execution decides; an upheld
challenge returns the bond and pays the challenger from the slash, a rejected one forfeits it."""

from datetime import timedelta

import pytest
from django.test import Client

from apps.accounts.services import api_key_issue
from apps.credits.selectors import balance_get, held_get
from apps.credits.services import TREASURY_CODE
from apps.credits.ledger import system_account
from apps.marketplace.models import Job
from apps.staking.models import Slash
from apps.staking.selectors import peer_balances
from apps.verification.challenges import ChallengeRefused, challenge_open
from apps.verification.models import Challenge

from .support import ANSWER, CHEAT_LOGPROBS, HONEST_LOGPROBS, make_worker, validator_answers, verified_job

# The API's views are async: their database calls run in another thread, which sees only
# committed rows.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("funded_treasury")]


def _post(job_id, key):
    return Client().post(f"/v1/jobs/{job_id}/challenge", HTTP_AUTHORIZATION=f"Bearer {key}")


def test_a_rejected_challenge_forfeits_its_bond_to_the_treasury(alice, bob, carol, entry, settings):
    worker, key = make_worker(bob, entry, "w", bonded=True)
    make_worker(carol, entry, "v")
    job = verified_job(alice, worker, key, entry)
    before, treasury = balance_get(user=alice), system_account(TREASURY_CODE).balance
    key = api_key_issue(user=alice)[1]
    response = _post(job.id, key)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["object"] == "peer.challenge" and body["state"] == "open"
    assert held_get(user=alice) == settings.PEER_CHALLENGE_BOND
    assert Job.objects.get(id=job.id).verification_status == "pending"
    challenge = Challenge.objects.get(id=body["id"])

    validator_answers(challenge.validations.get().id, output=ANSWER, logprobs=HONEST_LOGPROBS)
    challenge.refresh_from_db()
    assert challenge.state == "rejected" and held_get(user=alice) == 0
    assert balance_get(user=alice) == before - settings.PEER_CHALLENGE_BOND
    validator_pay = Job.objects.get(id=job.id).charged_amount * 70 // 100
    assert system_account(TREASURY_CODE).balance == treasury + settings.PEER_CHALLENGE_BOND - validator_pay
    assert Job.objects.get(id=job.id).verification_status == "passed" and not Slash.objects.exists()
    seen = Client().get(f"/v1/challenges/{challenge.id}", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert seen.status_code == 200 and seen.json()["state"] == "rejected"
    others = Client().get(f"/v1/challenges/{challenge.id}", HTTP_AUTHORIZATION=f"Bearer {api_key_issue(user=bob)[1]}")
    assert others.status_code == 404 and others.json()["error"]["code"] == "challenge_not_found"


def test_an_upheld_challenge_returns_the_bond_and_pays_the_challenger_from_the_slash(
        alice, bob, carol, mallory, entry, settings):
    cheater, key = make_worker(mallory, entry, "cheater", bonded=True)
    make_worker(bob, entry, "v1")
    make_worker(carol, entry, "v2")
    job = verified_job(alice, cheater, key, entry, output="Paris.")
    before = balance_get(user=alice)
    challenge, validation = challenge_open(user=alice, job_id=job.id)
    _, confirming = validator_answers(validation.id, output=ANSWER, logprobs=CHEAT_LOGPROBS)
    validator_answers(confirming.id, output=ANSWER, logprobs=CHEAT_LOGPROBS)
    challenge.refresh_from_db()
    assert challenge.state == "upheld" and balance_get(user=alice) == before and held_get(user=alice) == 0
    slash = Slash.objects.get()
    assert slash.challenger_id == alice.id and slash.to_challenger == settings.PEER_SLASH_AMOUNT // 2
    assert peer_balances(user=alice)["liquid"] == slash.to_challenger
    # A second challenge of a proven fault is refused: it is slashed once.
    with pytest.raises(ChallengeRefused) as refused:
        challenge_open(user=bob, job_id=job.id)
    assert refused.value.code == "already_proven" and Slash.objects.count() == 1


def test_a_challenge_after_the_window_is_refused_and_holds_nothing(alice, bob, entry, settings):
    worker, key = make_worker(bob, entry, "w", bonded=True)
    job = verified_job(alice, worker, key, entry)
    closes = job.finished_at + timedelta(seconds=settings.PEER_CHALLENGE_WINDOW_SECONDS)
    challenge_open(user=alice, job_id=job.id, now=closes)  # the last moment is still in
    Challenge.objects.update(state="undecided")  # (out of the way of the next one)
    with pytest.raises(ChallengeRefused) as refused:
        challenge_open(user=alice, job_id=job.id, now=closes + timedelta(seconds=1))
    assert refused.value.code == "challenge_window_closed" and Challenge.objects.count() == 1


def test_challenges_refused_with_clear_errors(alice, bob, carol, entry, settings):
    worker, key = make_worker(bob, entry, "w", bonded=True)
    job = verified_job(alice, worker, key, entry)
    alice_key, bob_key = api_key_issue(user=alice)[1], api_key_issue(user=bob)[1]
    assert _post(job.id, bob_key).json()["error"]["code"] == "own_worker"
    settings.PEER_CHALLENGE_BOND = 10**12
    poor = _post(job.id, alice_key)
    assert poor.status_code == 402 and poor.json()["error"]["code"] == "insufficient_credits"
    assert not Challenge.objects.exists() and held_get(user=alice) == 0
    settings.PEER_CHALLENGE_BOND = 50_000
    assert _post(job.id, alice_key).status_code == 201
    pending = _post(job.id, api_key_issue(user=carol)[1])
    assert pending.status_code == 409 and pending.json()["error"]["code"] == "challenge_pending"
    missing = _post("00000000-0000-0000-0000-000000000000", alice_key)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert Client().post(f"/v1/jobs/{job.id}/challenge").status_code == 401
