"""The double-entry ledger: grants, posting rules, idempotency, and a hold's settlement.

Every scenario ends by checking that value was neither created nor destroyed: the balances of
all accounts sum to zero per asset (the issuer accounts carry what entered). The autouse check in
conftest adds the per-transaction and per-account invariants.
"""

import pytest
from django.db import transaction
from django.db.models import Sum

from apps.credits.models import AccountKind, Asset, LedgerAccount, LedgerEntry, LedgerTransaction
from apps.credits.selectors import balance_get, held_get, transactions_for_reference
from apps.credits.services import (
    PROMO_CODE,
    STAKERS_POOL_CODE,
    TREASURY_CODE,
    IdempotencyConflict,
    InsufficientFunds,
    Leg,
    LedgerError,
    credits_grant,
    credits_hold_in_atomic,
    credits_settle_in_atomic,
    ledger_post,
    system_account,
    user_account,
    user_held_account,
    worker_account,
)
from apps.credits import ledger
from apps.workers.services import worker_register


@pytest.fixture(autouse=True, params=["one statement", "portable"])
def posting_path(request, monkeypatch):
    """Every scenario both ways a posting is written: in one statement (PostgreSQL, as shipped)
    and the portable way `make run`'s SQLite takes (ledger.ONE_STATEMENT_VENDORS)."""
    if request.param == "portable":
        monkeypatch.setattr(ledger, "ONE_STATEMENT_VENDORS", set())
    return request.param


def _balance(code: str) -> int:
    account = LedgerAccount.objects.filter(code=code).first()
    return account.balance if account else 0


def _assert_value_is_conserved():
    by_asset = dict(LedgerAccount.objects.values_list("asset").annotate(total=Sum("balance")))
    assert all(total == 0 for total in by_asset.values()), by_asset
    entries = dict(LedgerEntry.objects.values_list("asset").annotate(total=Sum("amount")))
    assert all(total == 0 for total in entries.values()), entries


def _snapshot():
    return (LedgerTransaction.objects.count(), LedgerEntry.objects.count(),
            sorted(LedgerAccount.objects.values_list("code", "balance")))


@pytest.fixture
def bobs_worker(bob):
    worker, _ = worker_register(operator=bob, name="bob-4090", tiers=["open", "verified"])
    return worker


@pytest.fixture
def alice_with_10_credits(alice):
    credits_grant(user=alice, credits=10, memo="welcome")
    return alice


def _hold(user, amount, reference):
    with transaction.atomic(durable=True):
        return credits_hold_in_atomic(user=user, amount=amount, reference=reference)


def _settle(user, held_amount, charge, worker, reference):
    with transaction.atomic(durable=True):
        return credits_settle_in_atomic(user=user, held_amount=held_amount, charge=charge, worker=worker,
                                        reference=reference)


# --- grants -----------------------------------------------------------------------------


def test_a_grant_moves_value_from_the_promo_account_to_the_user(alice):
    txn = credits_grant(user=alice, credits=10, memo="welcome")

    assert txn.kind == "grant"
    assert balance_get(user=alice) == 100_000
    assert _balance(PROMO_CODE) == -100_000
    assert sorted(txn.entries.values_list("amount", flat=True)) == [-100_000, 100_000]
    _assert_value_is_conserved()


def test_the_promo_account_may_go_ever_more_negative_because_it_issues_value(alice, bob):
    credits_grant(user=alice, credits=3)
    credits_grant(user=bob, credits=4)

    promo = LedgerAccount.objects.get(code=PROMO_CODE)
    assert promo.balance == -70_000
    assert promo.allow_negative is True
    assert promo.kind == AccountKind.PROMO
    _assert_value_is_conserved()


@pytest.mark.parametrize("credits", [0, -1])
def test_a_grant_must_be_positive(alice, credits):
    before = _snapshot()

    with pytest.raises(ValueError):
        credits_grant(user=alice, credits=credits)

    assert _snapshot() == before


def test_a_user_has_no_credits_before_their_first_movement(alice):
    assert balance_get(user=alice) == 0
    assert held_get(user=alice) == 0


def test_user_accounts_are_created_once_and_belong_to_their_user(alice):
    first, again = user_account(user=alice), user_account(user=alice)
    held = user_held_account(user=alice)

    assert first.id == again.id
    assert (first.kind, first.user, first.asset, first.allow_negative) == (AccountKind.USER, alice, Asset.USDC, False)
    assert (held.kind, held.user, held.allow_negative) == (AccountKind.HELD, alice, False)
    assert held.id != first.id


# --- posting rules ----------------------------------------------------------------------


def test_it_rejects_legs_that_do_not_sum_to_zero(alice_with_10_credits, bob):
    alice = alice_with_10_credits
    before = _snapshot()

    with pytest.raises(LedgerError, match="unbalanced"), transaction.atomic():
        ledger_post(kind="transfer", legs=[Leg(user_account(user=alice), -5_000),
                                           Leg(user_account(user=bob), 4_999)])

    assert _snapshot()[:2] == before[:2]
    assert balance_get(user=alice) == 100_000
    assert balance_get(user=bob) == 0
    _assert_value_is_conserved()


def test_it_raises_insufficient_funds_and_writes_nothing_when_a_user_would_go_negative(alice_with_10_credits, bob):
    alice = alice_with_10_credits
    user_account(user=bob)
    before = _snapshot()

    with pytest.raises(InsufficientFunds) as caught, transaction.atomic():
        ledger_post(kind="transfer", legs=[Leg(user_account(user=alice), -100_001),
                                           Leg(user_account(user=bob), 100_001)])

    assert caught.value.available == 100_000
    assert caught.value.needed == 100_001
    assert _snapshot() == before
    _assert_value_is_conserved()


def test_a_leg_naming_an_account_of_another_asset_is_refused_and_writes_nothing(alice_with_10_credits):
    from apps.credits.ledger import PEER_ISSUER_CODE, AccountSpec, system_spec

    alice = alice_with_10_credits
    system_account(PEER_ISSUER_CODE)
    before = _snapshot()
    # The user's USDC account named as if it held $PEER: balanced per asset, yet wrong.
    wrong = AccountSpec(code=user_account(user=alice).code, kind=AccountKind.USER, asset=Asset.PEER, user_id=alice.pk)
    with pytest.raises(LedgerError, match="asset"), transaction.atomic():
        ledger_post(kind="transfer", legs=[Leg(system_spec(PEER_ISSUER_CODE), -5), Leg(wrong, 5)])
    assert _snapshot() == before
    assert balance_get(user=alice) == 100_000
    _assert_value_is_conserved()


def test_a_user_may_spend_down_to_exactly_zero(alice_with_10_credits, bob):
    alice = alice_with_10_credits

    with transaction.atomic():
        ledger_post(kind="transfer", legs=[Leg(user_account(user=alice), -100_000),
                                           Leg(user_account(user=bob), 100_000)])

    assert balance_get(user=alice) == 0
    assert balance_get(user=bob) == 100_000
    _assert_value_is_conserved()


def test_the_treasury_and_the_stakers_pool_may_not_go_negative(alice):
    for code in (TREASURY_CODE, STAKERS_POOL_CODE):
        account = system_account(code)
        assert account.allow_negative is False
        with pytest.raises(InsufficientFunds), transaction.atomic():
            ledger_post(kind="transfer", legs=[Leg(account, -1), Leg(user_account(user=alice), 1)])

    assert balance_get(user=alice) == 0
    _assert_value_is_conserved()


def test_it_skips_zero_legs_when_writing_entries(alice_with_10_credits, bob):
    alice = alice_with_10_credits

    with transaction.atomic():
        txn = ledger_post(kind="transfer", legs=[Leg(user_account(user=alice), -1_000),
                                                 Leg(user_account(user=bob), 1_000),
                                                 Leg(system_account(TREASURY_CODE), 0)])

    assert sorted(txn.entries.values_list("amount", flat=True)) == [-1_000, 1_000]
    _assert_value_is_conserved()


def test_a_posting_that_moves_nothing_is_recorded_once_under_its_key(alice_with_10_credits, bob):
    # A settlement whose charge and refund are both zero posts only zero legs: no entry to write,
    # which the one-statement path cannot insert, so it takes the portable path, key and all.
    alice = alice_with_10_credits
    legs = [Leg(user_account(user=alice), 0), Leg(user_account(user=bob), 0)]
    before = _snapshot()

    with transaction.atomic():
        first = ledger_post(kind="transfer", legs=legs, idempotency_key="nothing-moves")
    with transaction.atomic():
        again = ledger_post(kind="transfer", legs=legs, idempotency_key="nothing-moves")

    assert again.id == first.id
    assert LedgerTransaction.objects.filter(idempotency_key="nothing-moves").count() == 1
    assert not first.entries.exists()
    transactions, entries, balances = before
    assert _snapshot() == (transactions + 1, entries, balances)
    _assert_value_is_conserved()


# --- idempotency ------------------------------------------------------------------------


def test_the_same_key_and_legs_return_the_same_transaction_without_a_second_entry(alice):
    first = credits_grant(user=alice, credits=10, idempotency_key="stripe:evt_1")
    entries = LedgerEntry.objects.count()

    again = credits_grant(user=alice, credits=10, idempotency_key="stripe:evt_1")

    assert again.id == first.id
    assert LedgerTransaction.objects.count() == 1
    assert LedgerEntry.objects.count() == entries
    assert balance_get(user=alice) == 100_000
    _assert_value_is_conserved()


def test_the_same_key_with_different_legs_is_an_idempotency_conflict(alice, bob):
    credits_grant(user=alice, credits=10, idempotency_key="stripe:evt_2")
    user_account(user=bob)
    before = _snapshot()

    with pytest.raises(IdempotencyConflict):
        credits_grant(user=alice, credits=11, idempotency_key="stripe:evt_2")
    with pytest.raises(IdempotencyConflict):
        credits_grant(user=bob, credits=10, idempotency_key="stripe:evt_2")

    assert _snapshot() == before
    assert balance_get(user=alice) == 100_000
    assert balance_get(user=bob) == 0
    _assert_value_is_conserved()


def test_grants_without_a_key_are_never_merged(alice):
    credits_grant(user=alice, credits=1)
    credits_grant(user=alice, credits=1)

    assert LedgerTransaction.objects.filter(kind="grant").count() == 2
    assert balance_get(user=alice) == 20_000
    _assert_value_is_conserved()


# --- hold and settle --------------------------------------------------------------------


def test_a_hold_moves_credits_to_the_held_account(alice_with_10_credits):
    alice = alice_with_10_credits

    txn = _hold(alice, 80_000, "job:a")

    assert txn.kind == "hold"
    assert txn.reference == "job:a"
    assert balance_get(user=alice) == 20_000
    assert held_get(user=alice) == 80_000
    _assert_value_is_conserved()


def test_a_hold_larger_than_the_credits_is_refused_and_writes_nothing(alice_with_10_credits):
    alice = alice_with_10_credits
    user_held_account(user=alice)
    before = _snapshot()

    with pytest.raises(InsufficientFunds):
        _hold(alice, 100_001, "job:too-big")

    assert _snapshot() == before
    assert transactions_for_reference(reference="job:too-big").count() == 0
    _assert_value_is_conserved()


def test_a_repeated_hold_returns_the_first_even_when_the_credits_no_longer_cover_it(alice_with_10_credits):
    alice = alice_with_10_credits

    first = _hold(alice, 80_000, "job:c")
    before = _snapshot()
    again = _hold(alice, 80_000, "job:c")  # 20,000 left: a new hold of 80,000 would be refused

    assert again.id == first.id and _snapshot() == before
    _assert_value_is_conserved()


def test_holding_twice_for_the_same_reference_holds_once(alice_with_10_credits):
    alice = alice_with_10_credits

    first = _hold(alice, 30_000, "job:b")
    again = _hold(alice, 30_000, "job:b")

    assert again.id == first.id
    assert balance_get(user=alice) == 70_000
    assert held_get(user=alice) == 30_000
    _assert_value_is_conserved()


def test_a_capture_pays_the_worker_the_stakers_and_the_treasury_and_releases_the_rest(
        alice_with_10_credits, bobs_worker):
    alice = alice_with_10_credits
    _hold(alice, 80_000, "job:c")

    txn = _settle(alice, 80_000, 50_000, bobs_worker, "job:c")

    assert txn.kind == "capture"
    assert worker_account(worker=bobs_worker).balance == 35_000
    assert worker_account(worker=bobs_worker).user == bobs_worker.operator
    assert _balance(STAKERS_POOL_CODE) == 12_000
    assert _balance(TREASURY_CODE) == 3_000
    assert held_get(user=alice) == 0
    assert balance_get(user=alice) == 20_000 + 30_000
    assert [t.kind for t in transactions_for_reference(reference="job:c")] == ["hold", "capture"]
    _assert_value_is_conserved()


def test_a_capture_of_the_whole_hold_releases_nothing(alice_with_10_credits, bobs_worker):
    alice = alice_with_10_credits
    _hold(alice, 100_000, "job:d")

    txn = _settle(alice, 100_000, 100_000, bobs_worker, "job:d")

    assert balance_get(user=alice) == 0
    assert held_get(user=alice) == 0
    assert worker_account(worker=bobs_worker).balance == 70_000
    assert _balance(STAKERS_POOL_CODE) == 24_000
    assert _balance(TREASURY_CODE) == 6_000
    # The user's release leg is zero, so it writes no entry.
    assert not txn.entries.filter(account=user_account(user=alice)).exists()
    _assert_value_is_conserved()


def test_an_odd_charge_sends_its_rounding_remainder_to_the_treasury(alice_with_10_credits, bobs_worker):
    alice = alice_with_10_credits
    _hold(alice, 10_000, "job:e")

    _settle(alice, 10_000, 7, bobs_worker, "job:e")

    assert worker_account(worker=bobs_worker).balance == 4
    assert _balance(STAKERS_POOL_CODE) == 2
    assert _balance(TREASURY_CODE) == 1
    assert balance_get(user=alice) == 100_000 - 7
    _assert_value_is_conserved()


def test_settling_twice_with_the_same_reference_settles_exactly_once(alice_with_10_credits, bobs_worker):
    alice = alice_with_10_credits
    _hold(alice, 80_000, "job:f")
    first = _settle(alice, 80_000, 50_000, bobs_worker, "job:f")
    before = _snapshot()

    again = _settle(alice, 80_000, 50_000, bobs_worker, "job:f")

    assert again.id == first.id
    assert _snapshot() == before
    assert balance_get(user=alice) == 50_000
    _assert_value_is_conserved()


def test_a_refund_after_a_capture_of_the_same_hold_is_refused(alice_with_10_credits, bobs_worker):
    alice = alice_with_10_credits
    _hold(alice, 80_000, "job:g")
    _settle(alice, 80_000, 50_000, bobs_worker, "job:g")
    before = _snapshot()

    with pytest.raises(IdempotencyConflict):
        _settle(alice, 80_000, 0, None, "job:g")

    assert _snapshot() == before
    _assert_value_is_conserved()


def test_it_refunds_the_whole_hold_when_the_charge_is_zero(alice_with_10_credits):
    alice = alice_with_10_credits
    _hold(alice, 80_000, "job:h")

    txn = _settle(alice, 80_000, 0, None, "job:h")

    assert txn.kind == "refund"
    assert balance_get(user=alice) == 100_000
    assert held_get(user=alice) == 0
    assert _balance(TREASURY_CODE) == 0
    assert _balance(STAKERS_POOL_CODE) == 0
    _assert_value_is_conserved()


@pytest.mark.parametrize("charge", [80_001, -1])
def test_a_charge_outside_the_hold_is_rejected(alice_with_10_credits, bobs_worker, charge):
    alice = alice_with_10_credits
    _hold(alice, 80_000, "job:i")
    before = _snapshot()

    with pytest.raises(LedgerError):
        _settle(alice, 80_000, charge, bobs_worker, "job:i")

    assert _snapshot() == before
    assert held_get(user=alice) == 80_000
    _assert_value_is_conserved()


def test_settling_more_than_is_held_is_refused(alice_with_10_credits, bobs_worker):
    alice = alice_with_10_credits
    _hold(alice, 30_000, "job:j")
    before = _snapshot()

    with pytest.raises(InsufficientFunds):
        _settle(alice, 50_000, 10_000, bobs_worker, "job:j")

    assert _snapshot() == before
    _assert_value_is_conserved()


def test_two_holds_settle_independently(alice_with_10_credits, bobs_worker):
    alice = alice_with_10_credits
    _hold(alice, 40_000, "job:k1")
    _hold(alice, 40_000, "job:k2")

    _settle(alice, 40_000, 10_000, bobs_worker, "job:k1")
    assert held_get(user=alice) == 40_000
    _settle(alice, 40_000, 0, None, "job:k2")

    assert held_get(user=alice) == 0
    assert balance_get(user=alice) == 100_000 - 10_000
    assert worker_account(worker=bobs_worker).balance == 7_000
    _assert_value_is_conserved()


@pytest.mark.django_db(transaction=True)
def test_a_posting_outside_a_transaction_is_refused_and_writes_nothing(alice):
    # Its account locks would end with the statement that took them: no posting without atomic().
    from django.db.transaction import TransactionManagementError

    promo, account = system_account(PROMO_CODE), user_account(user=alice)
    before = _snapshot()
    with pytest.raises(TransactionManagementError):
        ledger_post(kind="grant", legs=[Leg(promo, -1), Leg(account, 1)])
    assert _snapshot() == before
