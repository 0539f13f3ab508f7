"""Writes to the ledger. Every public service here opens its own durable transaction.

Lock order: ledger accounts are locked with SELECT ... FOR UPDATE in ascending id order, so two
movements touching the same accounts can never deadlock each other.
"""

from collections import defaultdict
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from .models import AccountKind, Asset, LedgerAccount, LedgerEntry, LedgerTransaction
from .pricing import credits_to_micro, split_capture

PROMO_CODE = "system:promo:USDC"
TREASURY_CODE = "system:treasury:USDC"
STAKERS_POOL_CODE = "system:stakers_pool:USDC"

_SYSTEM_ACCOUNTS = {
    PROMO_CODE: (AccountKind.PROMO, True),
    TREASURY_CODE: (AccountKind.TREASURY, False),
    STAKERS_POOL_CODE: (AccountKind.STAKERS_POOL, False),
}


class LedgerError(Exception):
    pass


class InsufficientFunds(LedgerError):
    def __init__(self, account: LedgerAccount, needed: int):
        super().__init__(f"{account.code} holds {account.balance}, needs {needed}")
        self.available = account.balance
        self.needed = needed


class IdempotencyConflict(LedgerError):
    """The same idempotency key was used for a different movement."""


@dataclass(frozen=True)
class Leg:
    account: LedgerAccount
    amount: int


def system_account(code: str) -> LedgerAccount:
    kind, allow_negative = _SYSTEM_ACCOUNTS[code]
    return _account_get_or_create(code=code, kind=kind, user=None, allow_negative=allow_negative)


def user_account(*, user) -> LedgerAccount:
    return _account_get_or_create(code=f"user:{user.pk}:USDC", kind=AccountKind.USER, user=user)


def user_held_account(*, user) -> LedgerAccount:
    return _account_get_or_create(code=f"user:{user.pk}:held:USDC", kind=AccountKind.HELD, user=user)


def worker_account(*, worker) -> LedgerAccount:
    return _account_get_or_create(code=f"worker:{worker.pk}:USDC", kind=AccountKind.WORKER,
                                  user=worker.operator)


def _account_get_or_create(*, code, kind, user, allow_negative=False) -> LedgerAccount:
    try:
        account, _ = LedgerAccount.objects.get_or_create(
            code=code, defaults={"kind": kind, "user": user, "asset": Asset.USDC,
                                 "allow_negative": allow_negative})
    except IntegrityError:  # created by a concurrent caller between get and create
        account = LedgerAccount.objects.get(code=code)
    return account


def _same_movement(txn: LedgerTransaction, legs: list[Leg]) -> bool:
    existing = sorted((e.account_id, e.amount) for e in txn.entries.all())
    wanted = sorted((leg.account.id, leg.amount) for leg in legs if leg.amount)
    return existing == wanted


def ledger_post(*, kind: str, legs: list[Leg], idempotency_key: str | None = None,
                reference: str = "", memo: str = "") -> LedgerTransaction:
    """Post one balanced transaction. Must run inside the caller's transaction.atomic().

    Locks every account of `legs` (ascending id). With an idempotency key already used for the
    same legs it returns the earlier transaction; for different legs it raises
    IdempotencyConflict. Raises InsufficientFunds when a non-issuer account would go negative.
    """
    totals: dict[str, int] = defaultdict(int)
    for leg in legs:
        totals[leg.account.asset] += leg.amount
    if any(totals.values()):
        raise LedgerError(f"unbalanced transaction: {dict(totals)}")
    ids = sorted({leg.account.id for leg in legs})
    locked = {a.id: a for a in LedgerAccount.objects.select_for_update().filter(id__in=ids).order_by("id")}
    if idempotency_key:
        # Looked up under the account locks: a concurrent duplicate touches the same accounts,
        # so it waits here and then finds the committed transaction instead of inserting twice.
        earlier = LedgerTransaction.objects.filter(idempotency_key=idempotency_key).first()
        if earlier is not None:
            if not _same_movement(earlier, legs):
                raise IdempotencyConflict(idempotency_key)
            return earlier
    deltas: dict[int, int] = defaultdict(int)
    for leg in legs:
        deltas[leg.account.id] += leg.amount
    for account_id, delta in deltas.items():
        account = locked[account_id]
        if not account.allow_negative and account.balance + delta < 0:
            raise InsufficientFunds(account, -delta)
    txn = LedgerTransaction.objects.create(kind=kind, idempotency_key=idempotency_key,
                                           reference=reference, memo=memo[:200])
    LedgerEntry.objects.bulk_create([
        LedgerEntry(transaction=txn, account_id=leg.account.id, asset=leg.account.asset, amount=leg.amount)
        for leg in legs if leg.amount
    ])
    for account_id, delta in deltas.items():
        if delta:
            account = locked[account_id]
            account.balance += delta
            account.save(update_fields=["balance"])
    return txn


def credits_grant(*, user, credits: int, memo: str = "", idempotency_key: str | None = None) -> LedgerTransaction:
    """Promotional credits from the treasury's promo (issuer) account to the user."""
    if credits <= 0:
        raise ValueError("a grant is positive")
    amount = credits_to_micro(credits)
    promo, account = system_account(PROMO_CODE), user_account(user=user)
    with transaction.atomic(durable=True):
        return ledger_post(kind="grant", idempotency_key=idempotency_key, memo=memo,
                           legs=[Leg(promo, -amount), Leg(account, amount)])


def credits_hold_in_atomic(*, user, amount: int, reference: str) -> LedgerTransaction:
    """Move `amount` from the user's credits to their held account. Caller holds an atomic block."""
    available, held = user_account(user=user), user_held_account(user=user)
    return ledger_post(kind="hold", reference=reference, idempotency_key=f"{reference}:hold",
                       legs=[Leg(available, -amount), Leg(held, amount)])


def credits_settle_in_atomic(*, user, held_amount: int, charge: int, worker, reference: str) -> LedgerTransaction:
    """Capture `charge` of a hold (70/24/6 split) and release the rest, in one transaction.

    A charge of zero is a full refund. The idempotency key is per reference, so a hold is
    settled exactly once whichever path (relay, reaper) gets there first.
    """
    if not 0 <= charge <= held_amount:
        raise LedgerError(f"charge {charge} outside the hold 0..{held_amount}")
    held, available = user_held_account(user=user), user_account(user=user)
    legs = [Leg(held, -held_amount), Leg(available, held_amount - charge)]
    if charge:
        split = split_capture(charge)
        legs += [Leg(worker_account(worker=worker), split.worker),
                 Leg(system_account(STAKERS_POOL_CODE), split.stakers_pool),
                 Leg(system_account(TREASURY_CODE), split.treasury)]
    return ledger_post(kind="capture" if charge else "refund", reference=reference,
                       idempotency_key=f"{reference}:settle", legs=legs)
