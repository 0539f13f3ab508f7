"""Money under concurrency, on real PostgreSQL connections (one per thread).

These tests commit for real (transaction=True), because row locks only matter between
separate database transactions.
"""

import threading
import time

import pytest
from django.db import connection, connections, transaction
from django.db.models import Sum

from apps.credits.models import LedgerAccount, LedgerTransaction
from apps.credits.selectors import balance_get, held_get
from apps.credits.services import (
    InsufficientFunds,
    credits_grant,
    credits_hold_in_atomic,
    user_account,
)
from tests.support.races import run_at_once

THREADS = 8


def _assert_value_is_conserved():
    by_asset = dict(LedgerAccount.objects.values_list("asset").annotate(total=Sum("balance")))
    assert all(total == 0 for total in by_asset.values()), by_asset


def _sessions_waiting_on_a_lock() -> int:
    # In autocommit each query is its own transaction, so pg_stat_activity is read fresh.
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_only_one_of_many_simultaneous_holds_gets_credits_meant_for_one(alice):
    credits_grant(user=alice, credits=8)  # 80,000: exactly one hold of 80,000
    observed_balances = []

    def hold(index):
        with transaction.atomic(durable=True):
            txn = credits_hold_in_atomic(user=alice, amount=80_000, reference=f"job:race-{index}")
            observed_balances.append(LedgerAccount.objects.get(code=f"user:{alice.pk}:USDC").balance)
            return txn

    results = run_at_once(hold, THREADS)

    won = [r for r in results if isinstance(r, LedgerTransaction)]
    refused = [r for r in results if isinstance(r, InsufficientFunds)]
    assert len(won) == 1, results
    assert len(refused) == THREADS - 1, results
    assert all(r.needed == 80_000 and r.available == 0 for r in refused)
    assert observed_balances == [0]
    assert balance_get(user=alice) == 0
    assert held_get(user=alice) == 80_000
    assert LedgerTransaction.objects.filter(kind="hold").count() == 1
    assert not LedgerAccount.objects.filter(balance__lt=0, allow_negative=False).exists()
    _assert_value_is_conserved()


@pytest.mark.django_db(transaction=True)
def test_simultaneous_small_holds_never_overdraw_the_credits(alice):
    credits_grant(user=alice, credits=10)  # 100,000: room for three holds of 30,000

    def hold(index):
        with transaction.atomic(durable=True):
            return credits_hold_in_atomic(user=alice, amount=30_000, reference=f"job:small-{index}")

    results = run_at_once(hold, THREADS)

    assert sum(isinstance(r, LedgerTransaction) for r in results) == 3, results
    assert sum(isinstance(r, InsufficientFunds) for r in results) == THREADS - 3, results
    assert balance_get(user=alice) == 10_000
    assert held_get(user=alice) == 90_000
    _assert_value_is_conserved()


@pytest.mark.django_db(transaction=True)
def test_a_grant_delivered_twice_at_the_same_moment_credits_once_and_answers_both(alice):
    # A payment notification retried while the first delivery is still being written: both
    # deliveries pass the idempotency check before either commits, then queue on the row locks.
    credits_grant(user=alice, credits=1)
    account_id = user_account(user=alice).id
    locked, release = threading.Event(), threading.Event()

    def hold_the_account():
        try:
            with transaction.atomic():
                LedgerAccount.objects.select_for_update().get(id=account_id)
                locked.set()
                release.wait(timeout=20)
        finally:
            connection.close()

    blocker = threading.Thread(target=hold_the_account)
    blocker.start()
    assert locked.wait(timeout=10)
    try:
        results: list = [None, None]

        def deliver(index):
            try:
                results[index] = credits_grant(user=alice, credits=5, idempotency_key="usdc:tx:5x9f")
            except BaseException as exc:  # noqa: BLE001
                results[index] = exc
            finally:
                connection.close()

        deliveries = [threading.Thread(target=deliver, args=(i,)) for i in range(2)]
        for thread in deliveries:
            thread.start()
        deadline = time.monotonic() + 10
        while _sessions_waiting_on_a_lock() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _sessions_waiting_on_a_lock() >= 2
    finally:
        release.set()
        blocker.join(timeout=10)
    for thread in deliveries:
        thread.join(timeout=20)

    assert all(isinstance(r, LedgerTransaction) for r in results), results
    assert results[0].id == results[1].id
    assert LedgerTransaction.objects.filter(idempotency_key="usdc:tx:5x9f").count() == 1
    assert balance_get(user=alice) == 10_000 + 50_000
    _assert_value_is_conserved()
