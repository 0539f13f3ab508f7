"""Scans running at once (two Celery workers, a retried task) credit a deposit once, on real
PostgreSQL connections (one per thread, committing for real)."""

import threading

import pytest


from apps.credits.deposits import services
from apps.credits.deposits.services import deposit_reference_create, deposits_scan
from apps.credits.models import Deposit, LedgerTransaction
from apps.credits.selectors import balance_get
from tests.credits.test_deposits_scan import assert_books_match_the_chain
from tests.support.races import run_at_once
from tests.support.solana_fixtures import USDC, solana, usdc  # noqa: F401


def _scan_at_once(count: int, monkeypatch) -> list:
    """Run deposits_scan in `count` threads, all holding their verdicts before any records one,
    so that every thread has passed the "already seen?" read and they race on the insert."""
    barrier = threading.Barrier(count)
    verdict = services.deposit_verdict

    def verdict_then_wait(**kwargs):
        result = verdict(**kwargs)
        barrier.wait(timeout=10)
        return result

    monkeypatch.setattr(services, "deposit_verdict", verdict_then_wait)
    # The scans meet at the barrier inside deposit_verdict, not at the start.
    return run_at_once(lambda index: deposits_scan(), count, release_together=False)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("scans", [2, 6])
def test_scans_racing_over_the_same_deposit_credit_it_once(alice, usdc, monkeypatch, scans):
    reference = deposit_reference_create(user=alice, micro_usdc=4 * USDC)
    signature = usdc.wallet().pay(4 * USDC, reference=reference.key)

    reports = _scan_at_once(scans, monkeypatch)

    assert not [r for r in reports if isinstance(r, BaseException)], reports
    assert sum(len(r.credited) for r in reports) == 1
    assert all(r.errors == [] for r in reports)
    assert Deposit.objects.get().signature == signature
    assert LedgerTransaction.objects.filter(kind="deposit").count() == 1
    assert balance_get(user=alice) == 4 * USDC
    assert_books_match_the_chain(usdc)


@pytest.mark.django_db(transaction=True)
def test_scans_racing_over_a_rejected_transfer_record_it_once(alice, mallory, usdc, monkeypatch):
    reference = deposit_reference_create(user=alice, micro_usdc=USDC)
    usdc.wallet().pay(USDC, reference=reference.key, destination=usdc.wallet(micro=0).account)

    reports = _scan_at_once(3, monkeypatch)

    assert sum(len(r.rejected) for r in reports) == 1
    assert Deposit.objects.get().status == "rejected"
    assert not LedgerTransaction.objects.filter(kind="deposit").exists()
    assert_books_match_the_chain(usdc)
