"""Stake, unstake with a cooldown, claim exactly once."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.credits.ledger import IdempotencyConflict, InsufficientFunds
from apps.staking.codes import liquid_code, staked_code, unstaking_code
from apps.staking.models import UnstakeRequest
from apps.staking.selectors import peer_balances, peer_supply
from apps.staking.services import (
    AlreadyClaimed,
    CooldownNotOver,
    peer_grant,
    peer_stake,
    unstake_claim,
    unstake_request,
)

from .helpers import PEER, assert_value_is_conserved, balance

WEEK = timedelta(days=7)


@pytest.fixture
def alice_with_peer(alice):
    peer_grant(user=alice, amount=100 * PEER)
    return alice


def test_staking_moves_liquid_peer_into_the_stake(alice_with_peer):
    peer_stake(user=alice_with_peer, amount=40 * PEER)

    assert peer_balances(user=alice_with_peer) == {"liquid": 60 * PEER, "staked": 40 * PEER, "unstaking": 0,
                                                   "bonds": []}
    assert peer_supply()["staked"] == 40 * PEER
    assert_value_is_conserved()


def test_staking_more_than_the_liquid_balance_is_refused_and_moves_nothing(alice_with_peer):
    with pytest.raises(InsufficientFunds) as refused:
        peer_stake(user=alice_with_peer, amount=101 * PEER)

    assert refused.value.available == 100 * PEER
    assert balance(liquid_code(alice_with_peer.pk)) == 100 * PEER
    assert balance(staked_code(alice_with_peer.pk)) == 0
    assert_value_is_conserved()


def test_stake_unstake_and_claim_after_the_cooldown_returns_the_peer(alice_with_peer):
    alice = alice_with_peer
    peer_stake(user=alice, amount=40 * PEER)
    start = timezone.now()

    request = unstake_request(user=alice, amount=15 * PEER, now=start)

    assert request.state == UnstakeRequest.State.PENDING
    assert request.available_at == start + WEEK
    assert peer_balances(user=alice)["staked"] == 25 * PEER
    assert peer_balances(user=alice)["unstaking"] == 15 * PEER

    claimed = unstake_claim(user=alice, request_id=request.id, now=start + WEEK)

    assert claimed.state == UnstakeRequest.State.CLAIMED
    assert claimed.claimed_at == start + WEEK
    assert peer_balances(user=alice) == {"liquid": 75 * PEER, "staked": 25 * PEER, "unstaking": 0, "bonds": []}
    assert_value_is_conserved()


def test_a_claim_during_the_cooldown_is_refused_with_the_time_it_ends(alice_with_peer):
    alice = alice_with_peer
    peer_stake(user=alice, amount=10 * PEER)
    start = timezone.now()
    request = unstake_request(user=alice, amount=10 * PEER, now=start)

    with pytest.raises(CooldownNotOver) as refused:
        unstake_claim(user=alice, request_id=request.id, now=start + WEEK - timedelta(seconds=1))

    assert str(refused.value) == f"cooldown until {(start + WEEK).isoformat()}"
    assert balance(unstaking_code(alice.pk)) == 10 * PEER
    assert balance(liquid_code(alice.pk)) == 90 * PEER
    request.refresh_from_db()
    assert request.state == UnstakeRequest.State.PENDING
    assert_value_is_conserved()


def test_a_request_claimed_twice_pays_once(alice_with_peer):
    alice = alice_with_peer
    peer_stake(user=alice, amount=10 * PEER)
    start = timezone.now()
    request = unstake_request(user=alice, amount=10 * PEER, now=start)
    unstake_claim(user=alice, request_id=request.id, now=start + WEEK)

    with pytest.raises(AlreadyClaimed):
        unstake_claim(user=alice, request_id=request.id, now=start + WEEK * 2)

    assert balance(liquid_code(alice.pk)) == 100 * PEER
    assert_value_is_conserved()


def test_the_same_claim_replayed_with_its_key_answers_the_same_request(alice_with_peer):
    alice = alice_with_peer
    peer_stake(user=alice, amount=10 * PEER)
    start = timezone.now()
    request = unstake_request(user=alice, amount=10 * PEER, now=start)

    first = unstake_claim(user=alice, request_id=request.id, idempotency_key="k1", now=start + WEEK)
    again = unstake_claim(user=alice, request_id=request.id, idempotency_key="k1", now=start + WEEK)

    assert first.claim_transaction_id == again.claim_transaction_id
    assert balance(liquid_code(alice.pk)) == 100 * PEER
    assert_value_is_conserved()


def test_a_claim_key_reused_for_another_request_of_the_same_amount_is_a_conflict(alice_with_peer):
    alice = alice_with_peer
    peer_stake(user=alice, amount=10 * PEER)
    start = timezone.now()
    one = unstake_request(user=alice, amount=5 * PEER, now=start)
    two = unstake_request(user=alice, amount=5 * PEER, now=start)
    unstake_claim(user=alice, request_id=one.id, idempotency_key="k1", now=start + WEEK)

    with pytest.raises(IdempotencyConflict):
        unstake_claim(user=alice, request_id=two.id, idempotency_key="k1", now=start + WEEK)

    two.refresh_from_db()
    assert two.state == UnstakeRequest.State.PENDING
    assert balance(liquid_code(alice.pk)) == 95 * PEER
    assert_value_is_conserved()


def test_nobody_claims_another_users_request(alice_with_peer, mallory):
    peer_stake(user=alice_with_peer, amount=10 * PEER)
    request = unstake_request(user=alice_with_peer, amount=10 * PEER, now=timezone.now() - WEEK)

    with pytest.raises(UnstakeRequest.DoesNotExist):
        unstake_claim(user=mallory, request_id=request.id)

    request.refresh_from_db()
    assert request.state == UnstakeRequest.State.PENDING
    assert balance(liquid_code(mallory.pk)) == 0
    assert_value_is_conserved()


def test_unstaking_more_than_is_staked_is_refused_and_creates_no_request(alice_with_peer):
    peer_stake(user=alice_with_peer, amount=10 * PEER)

    with pytest.raises(InsufficientFunds):
        unstake_request(user=alice_with_peer, amount=11 * PEER)

    assert not UnstakeRequest.objects.exists()
    assert balance(staked_code(alice_with_peer.pk)) == 10 * PEER
    assert_value_is_conserved()


def test_an_unstake_request_replayed_with_its_key_returns_the_same_request(alice_with_peer):
    peer_stake(user=alice_with_peer, amount=10 * PEER)

    first = unstake_request(user=alice_with_peer, amount=4 * PEER, idempotency_key="u1")
    again = unstake_request(user=alice_with_peer, amount=4 * PEER, idempotency_key="u1")

    assert first.id == again.id
    assert UnstakeRequest.objects.count() == 1
    assert balance(unstaking_code(alice_with_peer.pk)) == 4 * PEER
    assert_value_is_conserved()
