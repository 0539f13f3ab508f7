"""Validators are paid from the treasury's share of the margin, once per re-execution."""

import pytest
from django.db import transaction

from apps.credits.models import LedgerAccount
from apps.credits.pricing import split_capture, validator_pay
from apps.credits.services import (TREASURY_CODE, InsufficientFunds, credits_grant, credits_hold_in_atomic,
                                   credits_settle_in_atomic, validator_pay_for_reexecution)
from apps.workers.services import worker_register

pytestmark = pytest.mark.django_db


def _balance(code):
    return LedgerAccount.objects.get(code=code).balance


def test_validator_pay_is_seventy_percent_of_the_job_price_rounded_down():
    assert validator_pay(100_000) == 70_000 and validator_pay(7) == 4 and validator_pay(0) == 0
    with pytest.raises(ValueError):
        validator_pay(-1)


def test_a_validator_is_paid_from_the_treasury_once_per_reexecution(alice, bob, carol):
    worker, _ = worker_register(operator=bob, name="w", tiers=["verified"])
    validator, _ = worker_register(operator=carol, name="v", tiers=["verified"])
    credits_grant(user=alice, credits=100)
    for index in range(20):  # enough jobs for the treasury's 6% to cover one re-execution
        reference = f"job:{index}"
        with transaction.atomic():
            credits_hold_in_atomic(user=alice, amount=40_000, reference=reference)
            credits_settle_in_atomic(user=alice, held_amount=40_000, charge=40_000, worker=worker, reference=reference)
    treasury_before = _balance(TREASURY_CODE)
    assert treasury_before == 20 * split_capture(40_000).treasury
    for _ in range(2):  # a retried task pays once
        validator_pay_for_reexecution(validator=validator, job_price=40_000, reference="validation:job:3:v")
    assert _balance(f"worker:{validator.id}:USDC") == 28_000
    assert _balance(TREASURY_CODE) == treasury_before - 28_000


def test_an_empty_treasury_pays_nothing_and_says_so(carol):
    validator, _ = worker_register(operator=carol, name="v", tiers=["verified"])
    with pytest.raises(InsufficientFunds):
        validator_pay_for_reexecution(validator=validator, job_price=40_000, reference="validation:x")
    assert not LedgerAccount.objects.filter(code=f"worker:{validator.id}:USDC", balance__gt=0).exists()
