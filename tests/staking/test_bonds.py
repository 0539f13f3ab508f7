"""Worker bonds: lock, sufficiency for the verified tier, release with a cooldown, slashing."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.credits.ledger import PEER_BURNED_CODE, IdempotencyConflict, InsufficientFunds
from apps.credits.models import LedgerTransaction
from apps.staking.codes import bond_code, liquid_code, unbonding_code
from apps.staking.models import Slash, UnstakeRequest
from apps.staking.selectors import (
    peer_balances,
    peer_supply,
    worker_bond_get,
    worker_bond_sufficient,
    workers_with_sufficient_bond,
)
from apps.staking.services import (
    NothingToClaim,
    SlashExceedsBond,
    StakingError,
    bond_lock,
    bond_release,
    bond_slash,
    peer_grant,
    unstake_claim,
)

from .helpers import PEER, assert_value_is_conserved, balance

WEEK = timedelta(days=7)


@pytest.fixture
def bonded_worker(bob, bobs_worker):
    """bob's worker with exactly the verified bond (1,000 PEER) locked, 500 PEER left liquid."""
    peer_grant(user=bob, amount=1_500 * PEER)
    bond_lock(worker=bobs_worker, amount=1_000 * PEER)
    return bobs_worker


def test_a_bond_is_locked_from_the_operators_liquid_peer(bob, bonded_worker):
    assert worker_bond_get(worker=bonded_worker) == 1_000 * PEER
    assert balance(liquid_code(bob.pk)) == 500 * PEER
    assert peer_balances(user=bob)["bonds"] == [{"worker_id": bonded_worker.id, "worker_name": "bob-gpu-1",
                                                 "locked": 1_000 * PEER, "releasing": 0}]
    assert peer_supply()["bonded"] == 1_000 * PEER
    assert_value_is_conserved()


def test_a_bond_beyond_the_operators_liquid_peer_is_refused(bob, bobs_worker):
    peer_grant(user=bob, amount=10 * PEER)

    with pytest.raises(InsufficientFunds):
        bond_lock(worker=bobs_worker, amount=11 * PEER)

    assert worker_bond_get(worker=bobs_worker) == 0
    assert_value_is_conserved()


def test_the_verified_bond_is_sufficient_and_one_unit_less_is_not(bob, bobs_worker, bobs_other_worker):
    peer_grant(user=bob, amount=2_000 * PEER)
    bond_lock(worker=bobs_worker, amount=1_000 * PEER)
    bond_lock(worker=bobs_other_worker, amount=1_000 * PEER - 1)

    assert worker_bond_sufficient(worker=bobs_worker) is True
    assert worker_bond_sufficient(worker=bobs_other_worker) is False
    assert workers_with_sufficient_bond(worker_ids=[bobs_worker.id, bobs_other_worker.id]) == {bobs_worker.id}
    assert_value_is_conserved()


def test_a_worker_without_a_bond_is_not_sufficient(bobs_worker):
    assert worker_bond_sufficient(worker=bobs_worker) is False


def test_a_released_bond_stops_counting_at_once_and_is_claimable_after_the_cooldown(bob, bonded_worker):
    start = timezone.now()

    release = bond_release(worker=bonded_worker, amount=400 * PEER, now=start)

    assert release.source == UnstakeRequest.Source.BOND and release.user == bob
    assert worker_bond_get(worker=bonded_worker) == 600 * PEER
    assert worker_bond_sufficient(worker=bonded_worker) is False
    assert balance(unbonding_code(bonded_worker.id)) == 400 * PEER

    unstake_claim(user=bob, request_id=release.id, now=start + WEEK)

    assert balance(liquid_code(bob.pk)) == 900 * PEER
    assert balance(unbonding_code(bonded_worker.id)) == 0
    assert_value_is_conserved()


def test_a_slash_larger_than_the_bond_is_refused_and_nothing_moves(carol, bonded_worker):
    before = list(LedgerTransaction.objects.values_list("id", flat=True))

    with pytest.raises(SlashExceedsBond, match="exceeds the worker's bond of 1000000000000"):
        bond_slash(worker=bonded_worker, amount=1_000 * PEER + 1, challenger=carol, reason="mismatch",
                   idempotency_key="slash:fault-1")

    assert list(LedgerTransaction.objects.values_list("id", flat=True)) == before
    assert not Slash.objects.exists()
    assert worker_bond_get(worker=bonded_worker) == 1_000 * PEER
    assert balance(liquid_code(carol.pk)) == 0
    assert_value_is_conserved()


def test_a_slash_pays_the_challenger_their_percent_and_burns_the_rest_so_supply_falls(carol, bonded_worker):
    supply_before = peer_supply()

    slash = bond_slash(worker=bonded_worker, amount=301, challenger=carol, reason="re-execution mismatch",
                       idempotency_key="slash:fault-1")

    assert (slash.to_challenger, slash.burned) == (150, 151)  # 50% floored to the challenger
    assert balance(liquid_code(carol.pk)) == 150
    assert balance(PEER_BURNED_CODE) == 151
    assert worker_bond_get(worker=bonded_worker) == 1_000 * PEER - 301
    supply = peer_supply()
    assert supply["burned"] == 151
    assert supply["circulating"] == supply_before["circulating"] - 151
    assert supply["minted"] == supply_before["minted"]
    assert_value_is_conserved()


def test_a_slash_without_a_challenger_burns_it_all(bonded_worker):
    slash = bond_slash(worker=bonded_worker, amount=10 * PEER, challenger=None, reason="attestation forged",
                       idempotency_key="slash:fault-2")

    assert (slash.to_challenger, slash.burned) == (0, 10 * PEER)
    assert peer_supply()["burned"] == 10 * PEER
    assert_value_is_conserved()


def test_the_same_fault_slashed_twice_is_slashed_once(carol, bonded_worker):
    first = bond_slash(worker=bonded_worker, amount=100 * PEER, challenger=carol, reason="mismatch",
                       idempotency_key="slash:fault-3")
    again = bond_slash(worker=bonded_worker, amount=100 * PEER, challenger=carol, reason="mismatch",
                       idempotency_key="slash:fault-3")

    assert first.id == again.id
    assert Slash.objects.count() == 1
    assert worker_bond_get(worker=bonded_worker) == 900 * PEER
    assert balance(liquid_code(carol.pk)) == 50 * PEER
    assert_value_is_conserved()


def test_the_same_fault_key_with_other_terms_is_a_conflict(carol, mallory, bonded_worker):
    bond_slash(worker=bonded_worker, amount=100 * PEER, challenger=carol, reason="mismatch",
               idempotency_key="slash:fault-4")

    with pytest.raises(IdempotencyConflict):
        bond_slash(worker=bonded_worker, amount=100 * PEER, challenger=mallory, reason="mismatch",
                   idempotency_key="slash:fault-4")

    assert balance(liquid_code(mallory.pk)) == 0
    assert_value_is_conserved()


def test_an_operator_cannot_challenge_their_own_worker(bob, bonded_worker):
    with pytest.raises(StakingError):
        bond_slash(worker=bonded_worker, amount=PEER, challenger=bob, reason="self", idempotency_key="slash:self")

    assert worker_bond_get(worker=bonded_worker) == 1_000 * PEER


def test_a_bond_released_just_before_a_fault_is_found_is_still_slashed(bob, carol, bonded_worker):
    # mallory's trick: release the bond right after cheating, before re-execution catches it.
    start = timezone.now()
    release = bond_release(worker=bonded_worker, amount=1_000 * PEER, now=start)

    slash = bond_slash(worker=bonded_worker, amount=1_000 * PEER, challenger=carol, reason="mismatch",
                       idempotency_key="slash:fault-5")

    assert (slash.from_bond, slash.from_unbonding) == (0, 1_000 * PEER)
    release.refresh_from_db()
    assert release.state == UnstakeRequest.State.SLASHED and release.payable == 0
    with pytest.raises(NothingToClaim):
        unstake_claim(user=bob, request_id=release.id, now=start + WEEK)
    assert balance(liquid_code(bob.pk)) == 500 * PEER
    assert_value_is_conserved()


def test_a_slash_takes_the_locked_bond_first_then_the_newest_release(bob, carol, bonded_worker):
    start = timezone.now()
    older = bond_release(worker=bonded_worker, amount=300 * PEER, now=start)
    newer = bond_release(worker=bonded_worker, amount=300 * PEER, now=start)

    bond_slash(worker=bonded_worker, amount=500 * PEER, challenger=carol, reason="mismatch",
               idempotency_key="slash:fault-6")

    older.refresh_from_db()
    newer.refresh_from_db()
    assert worker_bond_get(worker=bonded_worker) == 0
    assert (newer.payable, older.payable) == (200 * PEER, 300 * PEER)
    unstake_claim(user=bob, request_id=newer.id, now=start + WEEK)
    unstake_claim(user=bob, request_id=older.id, now=start + WEEK)
    assert balance(liquid_code(bob.pk)) == 1_000 * PEER
    assert balance(unbonding_code(bonded_worker.id)) == 0
    assert_value_is_conserved()


def test_the_ledger_records_every_bond_movement_under_the_workers_reference(carol, bonded_worker):
    bond_slash(worker=bonded_worker, amount=PEER, challenger=carol, reason="mismatch", idempotency_key="slash:f7")

    assert set(LedgerTransaction.objects.filter(reference__contains=str(bonded_worker.id))
               .values_list("kind", flat=True)) == {"peer_bond_lock", "peer_slash"}
    assert balance(bond_code(bonded_worker.id)) == 999 * PEER
