"""Genesis and grants: the $PEER supply enters the ledger once, through the treasury."""

import pytest

from apps.credits.ledger import PEER_ISSUER_CODE, IdempotencyConflict, InsufficientFunds
from apps.credits.models import LedgerTransaction
from apps.staking.codes import PEER_TREASURY_CODE, liquid_code
from apps.staking.selectors import peer_supply
from apps.staking.services import peer_grant, peer_mint_initial_supply

from .helpers import PEER, assert_value_is_conserved, balance


def test_genesis_mints_the_initial_supply_into_the_treasury(db):
    txn = peer_mint_initial_supply()

    assert txn.idempotency_key == "peer:genesis"
    assert balance(PEER_TREASURY_CODE) == 1_000_000 * PEER
    assert balance(PEER_ISSUER_CODE) == -1_000_000 * PEER
    assert peer_supply()["minted"] == peer_supply()["circulating"] == 1_000_000 * PEER
    assert_value_is_conserved()


def test_genesis_run_twice_mints_once(db):
    first = peer_mint_initial_supply()
    second = peer_mint_initial_supply()

    assert first.id == second.id
    assert LedgerTransaction.objects.filter(kind="peer_genesis").count() == 1
    assert peer_supply()["minted"] == 1_000_000 * PEER
    assert_value_is_conserved()


def test_genesis_with_a_changed_supply_setting_is_a_conflict_not_a_second_mint(db, settings):
    peer_mint_initial_supply()
    settings.PEER_INITIAL_SUPPLY = 2_000_000 * PEER

    with pytest.raises(IdempotencyConflict):
        peer_mint_initial_supply()
    assert balance(PEER_TREASURY_CODE) == 1_000_000 * PEER


def test_a_grant_moves_peer_from_the_treasury_and_mints_the_genesis_if_needed(alice):
    peer_grant(user=alice, amount=25 * PEER)

    assert balance(liquid_code(alice.pk)) == 25 * PEER
    assert balance(PEER_TREASURY_CODE) == (1_000_000 - 25) * PEER
    assert peer_supply()["minted"] == 1_000_000 * PEER
    assert_value_is_conserved()


def test_a_grant_with_the_same_key_twice_grants_once(alice):
    peer_grant(user=alice, amount=5 * PEER, idempotency_key="demo:alice")
    peer_grant(user=alice, amount=5 * PEER, idempotency_key="demo:alice")

    assert balance(liquid_code(alice.pk)) == 5 * PEER
    assert_value_is_conserved()


def test_a_grant_beyond_the_treasury_is_refused(alice):
    with pytest.raises(InsufficientFunds):
        peer_grant(user=alice, amount=1_000_001 * PEER)

    assert balance(liquid_code(alice.pk)) == 0
    assert_value_is_conserved()


@pytest.mark.parametrize("amount", [0, -1, 1.5, "5", True])
def test_a_grant_of_anything_but_a_positive_integer_is_refused(alice, amount):
    with pytest.raises(ValueError):
        peer_grant(user=alice, amount=amount)
