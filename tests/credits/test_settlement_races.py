"""Races on one job's money, on PostgreSQL with real concurrent transactions: a capture racing a
refund, two captures of one hold. Exactly one settles; nothing is created or lost."""

import json

import pytest

from apps.credits.ledger import PROMO_CODE, LedgerError, Leg, ledger_post, system_account
from apps.credits.selectors import balance_get, held_get
from apps.credits.services import credits_grant, user_account
from apps.marketplace.demo import catalogue_seed_builtin
from apps.marketplace.models import Job
from apps.marketplace.requests import parse_chat_request
from apps.marketplace.services import job_complete, job_create, job_fail
from apps.workers.models import CatalogueModel
from apps.workers.services import worker_register
from tests.support.races import run_at_once


def _job(user, worker):
    catalogue_seed_builtin()
    chat = parse_chat_request(json.dumps({"model": "gemma-3-270m", "messages": [{"role": "user", "content": "hi"}]}).encode(),
                              # Open tier: these races are about money; a verified job would also
                              # need the worker's signature (tests/marketplace/test_commitments.py).
                              default_tier="open", default_max_tokens=32, max_tokens_limit=1024)
    job = job_create(user=user, chat=chat, entry=CatalogueModel.objects.get(name="gemma-3-270m"))
    Job.objects.filter(id=job.id).update(worker=worker, model_digest="sha256:x")
    return job


def _race(*calls):
    return [r for r in run_at_once(lambda i: calls[i](), len(calls)) if isinstance(r, BaseException)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("rounds", range(3))
def test_a_capture_racing_a_refund_settles_the_hold_exactly_once(alice, bob, rounds):
    worker, _ = worker_register(operator=bob, name="w", tiers=["open"])
    credits_grant(user=alice, credits=100)
    job = _job(alice, worker)
    errors = _race(lambda: job_complete(job_id=job.id, output_text="Hello there", finish_reason="stop",
                                        model_digest="sha256:x"),
                   lambda: job_fail(job_id=job.id, code="timeout", message="too slow"))
    assert errors == []
    job.refresh_from_db()
    assert job.hold_state in ("captured", "released") and held_get(user=alice) == 0
    assert balance_get(user=alice) == 1_000_000 - (job.charged_amount or 0)


@pytest.mark.django_db(transaction=True)
def test_two_captures_of_one_hold_charge_once(alice, bob):
    worker, _ = worker_register(operator=bob, name="w", tiers=["open"])
    credits_grant(user=alice, credits=100)
    job = _job(alice, worker)
    complete = lambda: job_complete(job_id=job.id, output_text="Hi", finish_reason="stop", model_digest="sha256:x")  # noqa: E731
    assert _race(complete, complete, complete) == []
    job.refresh_from_db()
    assert job.hold_state == "captured" and balance_get(user=alice) == 1_000_000 - job.charged_amount


@pytest.mark.django_db
@pytest.mark.parametrize("amount", [2**62, -(2**62), 2**70, 1.5, True])
def test_overflowing_or_non_integer_amounts_are_refused_before_the_database(alice, amount):
    from django.db import transaction

    with pytest.raises(LedgerError), transaction.atomic():
        ledger_post(kind="grant", legs=[Leg(system_account(PROMO_CODE), -amount), Leg(user_account(user=alice), amount)])
    assert balance_get(user=alice) == 0
