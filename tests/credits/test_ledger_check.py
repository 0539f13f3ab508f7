"""manage.py ledger_check: silent success on a sound ledger, a named violation otherwise."""

import io

import pytest
from django.core.management import CommandError, call_command

from apps.credits.models import LedgerAccount, LedgerEntry
from apps.credits.services import (PEER_BURNED_CODE, PEER_ISSUER_CODE, Leg, credits_grant,
                                   credits_hold_in_atomic, ledger_post, system_account, user_account)

pytestmark = pytest.mark.django_db


def _check() -> str:
    out = io.StringIO()
    call_command("ledger_check", stdout=out)
    return out.getvalue()


def _violations() -> str:
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("ledger_check", stdout=io.StringIO(), stderr=err)
    return err.getvalue()


def test_a_sound_ledger_passes(alice):
    credits_grant(user=alice, credits=10)
    assert "ledger sound" in _check()


def test_a_balance_edited_behind_the_ledgers_back_is_named(alice):
    credits_grant(user=alice, credits=10)
    LedgerAccount.objects.filter(code=f"user:{alice.id}:USDC").update(balance=1)
    assert f"user:{alice.id}:USDC balance 1 != entries 100000" in _violations()
    LedgerAccount.objects.filter(code=f"user:{alice.id}:USDC").update(balance=100000)


def test_an_unbalanced_transaction_is_named(alice):
    txn = credits_grant(user=alice, credits=10)
    entry = LedgerEntry.objects.filter(transaction=txn, amount__gt=0).get()
    LedgerEntry.objects.filter(id=entry.id).update(amount=entry.amount + 1)
    report = _violations()
    assert f"transaction {txn.id} sums to 1 USDC" in report
    LedgerEntry.objects.filter(id=entry.id).update(amount=entry.amount)


def test_a_hold_settled_twice_is_named(alice):
    from django.db import transaction

    from apps.credits.models import LedgerTransaction

    credits_grant(user=alice, credits=10)
    with transaction.atomic():
        credits_hold_in_atomic(user=alice, amount=5000, reference="job:x")
        held = LedgerAccount.objects.get(code=f"user:{alice.id}:held:USDC")
        # Two settlements of one hold, each balanced: only the hold rule can catch this.
        for part in (2000, 3000):
            ledger_post(kind="refund", reference="job:x", legs=[Leg(held, -part), Leg(user_account(user=alice), part)])
    assert "job:x was held 1 times and settled 2 times" in _violations()
    # Undo the corruption so the suite's own end-of-test ledger check sees a sound ledger.
    LedgerEntry.objects.filter(transaction__reference="job:x").delete()
    LedgerTransaction.objects.filter(reference="job:x").delete()
    LedgerAccount.objects.filter(id=held.id).update(balance=0)
    LedgerAccount.objects.filter(code=f"user:{alice.id}:USDC").update(balance=100000)


def test_peer_supply_must_equal_minted_minus_burned(alice):
    from django.db import transaction

    with transaction.atomic():
        ledger_post(kind="mint", legs=[Leg(system_account(PEER_ISSUER_CODE), -1000),
                                       Leg(system_account(PEER_BURNED_CODE), 1000)])
    assert "ledger sound" in _check()  # minting straight into the burn account is still consistent
    LedgerAccount.objects.filter(code=PEER_BURNED_CODE).update(balance=999)
    assert "balance 999 != entries 1000" in _violations()
    LedgerAccount.objects.filter(code=PEER_BURNED_CODE).update(balance=1000)
