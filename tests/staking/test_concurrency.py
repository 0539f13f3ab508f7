"""$PEER under concurrency, on real PostgreSQL connections (one per thread).

These tests commit for real (transaction=True): row locks only matter between separate
database transactions.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.credits.models import LedgerTransaction
from apps.credits.selectors import balance_get
from apps.staking.codes import liquid_code, unbonding_code
from apps.staking.models import Epoch, Slash, UnstakeRequest
from apps.staking.selectors import peer_supply, worker_bond_get
from apps.staking.services import (
    AlreadyClaimed,
    NothingToClaim,
    SlashExceedsBond,
    bond_lock,
    bond_release,
    bond_slash,
    epoch_close,
    peer_grant,
    peer_stake,
    unstake_claim,
    unstake_request,
)

from tests.support.races import run_at_once

from .helpers import PEER, a_job_pays_the_stakers_pool, assert_value_is_conserved, balance

THREADS = 8
pytestmark = pytest.mark.django_db(transaction=True)


def _run_at_once(target, count=THREADS):
    return run_at_once(target, count)


@pytest.fixture
def bonded_worker(bob, bobs_worker):
    peer_grant(user=bob, amount=1_000 * PEER)
    bond_lock(worker=bobs_worker, amount=1_000 * PEER)
    return bobs_worker


def test_of_simultaneous_claims_of_one_unstake_request_exactly_one_pays(alice):
    peer_grant(user=alice, amount=10 * PEER)
    peer_stake(user=alice, amount=10 * PEER)
    request = unstake_request(user=alice, amount=10 * PEER, now=timezone.now() - timedelta(days=8))

    results = _run_at_once(lambda i: unstake_claim(user=alice, request_id=request.id))

    assert sum(isinstance(r, UnstakeRequest) for r in results) == 1, results
    assert sum(isinstance(r, AlreadyClaimed) for r in results) == THREADS - 1, results
    assert balance(liquid_code(alice.pk)) == 10 * PEER
    assert LedgerTransaction.objects.filter(kind="peer_unstake_claim").count() == 1
    assert_value_is_conserved()


def test_of_simultaneous_slashes_each_taking_the_whole_bond_exactly_one_wins(carol, bonded_worker):
    def slash(index):
        return bond_slash(worker=bonded_worker, amount=1_000 * PEER, challenger=carol, reason="mismatch",
                          idempotency_key=f"slash:fault-{index}")

    results = _run_at_once(slash)

    assert sum(isinstance(r, Slash) for r in results) == 1, results
    assert sum(isinstance(r, SlashExceedsBond) for r in results) == THREADS - 1, results
    assert worker_bond_get(worker=bonded_worker) == 0
    assert balance(liquid_code(carol.pk)) == 500 * PEER
    assert peer_supply()["burned"] == 500 * PEER
    assert_value_is_conserved()


def test_one_fault_slashed_from_many_places_at_once_is_slashed_once(carol, bonded_worker):
    def slash(index):
        return bond_slash(worker=bonded_worker, amount=100 * PEER, challenger=carol, reason="mismatch",
                          idempotency_key="slash:fault-42")

    results = _run_at_once(slash)

    assert all(isinstance(r, Slash) for r in results), results
    assert len({r.id for r in results}) == 1
    assert Slash.objects.count() == 1
    assert worker_bond_get(worker=bonded_worker) == 900 * PEER
    assert_value_is_conserved()


def test_a_bond_release_claimed_while_it_is_being_slashed_is_paid_or_slashed_never_both(bob, carol, bonded_worker):
    release = bond_release(worker=bonded_worker, amount=1_000 * PEER, now=timezone.now() - timedelta(days=8))

    def claim_or_slash(index):
        if index % 2:
            return unstake_claim(user=bob, request_id=release.id)
        return bond_slash(worker=bonded_worker, amount=1_000 * PEER, challenger=carol, reason="mismatch",
                          idempotency_key=f"slash:late-{index}")

    results = _run_at_once(claim_or_slash)

    claims = [r for r in results if isinstance(r, UnstakeRequest)]
    slashes = [r for r in results if isinstance(r, Slash)]
    assert len(claims) + len(slashes) == 1, results
    assert all(isinstance(r, (AlreadyClaimed, NothingToClaim, SlashExceedsBond, UnstakeRequest, Slash))
               for r in results), results
    assert balance(liquid_code(bob.pk)) == (1_000 * PEER if claims else 0)
    assert balance(unbonding_code(bonded_worker.id)) == 0
    assert_value_is_conserved()


def test_an_epoch_closed_by_several_beats_at_once_pays_once(alice, bobs_worker):
    peer_grant(user=alice, amount=5 * PEER)
    peer_stake(user=alice, amount=5 * PEER)
    a_job_pays_the_stakers_pool(worker=bobs_worker, charge=1_000_000, reference="job:race")
    now = timezone.now()

    results = _run_at_once(lambda i: epoch_close(now=now))

    assert all(isinstance(r, Epoch) for r in results), results
    assert len({r.id for r in results}) == 1
    assert LedgerTransaction.objects.filter(kind="peer_epoch").count() == 1
    assert balance_get(user=alice) == 240_000
    assert_value_is_conserved()


def test_staking_while_an_epoch_closes_never_deadlocks(alice, carol, bobs_worker):
    for user in (alice, carol):
        peer_grant(user=user, amount=100 * PEER)
        peer_stake(user=user, amount=PEER)
    a_job_pays_the_stakers_pool(worker=bobs_worker, charge=1_000_000, reference="job:mix")
    now = timezone.now()

    def mixed(index):
        if index == 0:
            return epoch_close(now=now)
        return peer_stake(user=(alice, carol)[index % 2], amount=PEER)

    results = _run_at_once(mixed)

    assert not any(isinstance(r, Exception) for r in results), results
    assert balance_get(user=alice) + balance_get(user=carol) + balance("system:stakers_pool:USDC") == 240_000
    assert_value_is_conserved()
