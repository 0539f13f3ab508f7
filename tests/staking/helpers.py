"""Shared checks and set-ups of the $PEER tests."""

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Sum

from apps.credits.models import LedgerAccount
from apps.credits.pricing import split_capture
from apps.credits.services import credits_grant, credits_hold_in_atomic, credits_settle_in_atomic

PEER = 10**9  # base units in one $PEER


def assert_value_is_conserved():
    """Nothing created or lost: every asset's balances, issuers included, sum to zero."""
    by_asset = dict(LedgerAccount.objects.values_list("asset").annotate(total=Sum("balance")))
    assert all(total == 0 for total in by_asset.values()), by_asset


def balance(code: str) -> int:
    account = LedgerAccount.objects.filter(code=code).first()
    return account.balance if account else 0


def a_job_pays_the_stakers_pool(*, worker, charge: int, reference: str) -> int:
    """A buyer's job of `charge` micro-USDC settles for real; returns what the pool received."""
    buyer, _ = get_user_model().objects.get_or_create(username="buyer", defaults={"email": "buyer@example.com"})
    credits_grant(user=buyer, credits=-(-charge // 10_000))
    with transaction.atomic(durable=True):
        credits_hold_in_atomic(user=buyer, amount=charge, reference=reference)
    with transaction.atomic(durable=True):
        credits_settle_in_atomic(user=buyer, held_amount=charge, charge=charge, worker=worker, reference=reference)
    return split_capture(charge).stakers_pool
