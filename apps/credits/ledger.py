"""The ledger core: accounts, balanced postings, idempotency. Every balance change goes
through `ledger_post`.

Lock order: ledger accounts are locked with SELECT ... FOR UPDATE in ascending id order, so two
movements touching the same accounts can never deadlock each other.

A leg names its account either as a LedgerAccount row or as an AccountSpec (its code and what to
create it with): a posting locks its accounts by code in one statement and creates only those
missing, so a hot path reads no account before posting (docs/benchmarks.md).
"""

from collections import defaultdict
from dataclasses import dataclass

from django.db import IntegrityError, connection

from .models import AccountKind, Asset, LedgerAccount, LedgerEntry, LedgerTransaction

MAX_AMOUNT = 2**61
PROMO_CODE = "system:promo:USDC"
TREASURY_CODE = "system:treasury:USDC"
STAKERS_POOL_CODE = "system:stakers_pool:USDC"
EXTERNAL_USDC_CODE = "external:solana:USDC"
PAYOUTS_PENDING_CODE = "system:payouts_pending:USDC"
PEER_ISSUER_CODE = "system:peer_issuer:PEER"
PEER_BURNED_CODE = "system:peer_burned:PEER"

# code -> (kind, asset, may go negative). Issuers are where value enters the ledger.
SYSTEM_ACCOUNTS = {
    PROMO_CODE: (AccountKind.PROMO, Asset.USDC, True),
    TREASURY_CODE: (AccountKind.TREASURY, Asset.USDC, False),
    STAKERS_POOL_CODE: (AccountKind.STAKERS_POOL, Asset.USDC, False),
    EXTERNAL_USDC_CODE: (AccountKind.EXTERNAL, Asset.USDC, True),
    PAYOUTS_PENDING_CODE: (AccountKind.PAYOUT_PENDING, Asset.USDC, False),
    PEER_ISSUER_CODE: (AccountKind.PEER_ISSUER, Asset.PEER, True),
    PEER_BURNED_CODE: (AccountKind.BURNED, Asset.PEER, False),
}


class LedgerError(Exception):
    pass


class InsufficientFunds(LedgerError):
    def __init__(self, account: LedgerAccount, needed: int):
        super().__init__(f"{account.code} holds {account.balance}, needs {needed}")
        self.account_code = account.code
        self.available = account.balance
        self.needed = needed


class IdempotencyConflict(LedgerError):
    """The same idempotency key was used for a different movement (HTTP 409 at the edge)."""


@dataclass(frozen=True)
class AccountSpec:
    """An account by its code, created as described on its first posting."""

    code: str
    kind: str
    asset: str = Asset.USDC
    user_id: int | None = None
    allow_negative: bool = False


@dataclass(frozen=True)
class Leg:
    account: LedgerAccount | AccountSpec
    amount: int


def system_account(code: str) -> LedgerAccount:
    kind, asset, allow_negative = SYSTEM_ACCOUNTS[code]
    return account_get_or_create(code=code, kind=kind, asset=asset, user=None, allow_negative=allow_negative)


def system_spec(code: str) -> AccountSpec:
    kind, asset, allow_negative = SYSTEM_ACCOUNTS[code]
    return AccountSpec(code=code, kind=kind, asset=asset, allow_negative=allow_negative)


def account_get_or_create(*, code: str, kind: str, asset: str = Asset.USDC, user=None,
                          allow_negative: bool = False) -> LedgerAccount:
    try:
        account, _ = LedgerAccount.objects.get_or_create(
            code=code, defaults={"kind": kind, "user": user, "asset": asset, "allow_negative": allow_negative})
    except IntegrityError:  # created by a concurrent caller between get and create
        account = LedgerAccount.objects.get(code=code)
    return account


def _same_movement(txn: LedgerTransaction, legs: list[Leg], locked: dict[str, LedgerAccount]) -> bool:
    existing = sorted((e.account_id, e.amount) for e in txn.entries.all())
    wanted = sorted((locked[leg.account.code].id, leg.amount) for leg in legs if leg.amount)
    return existing == wanted


def _lock(legs: list[Leg]) -> dict[str, LedgerAccount]:
    """The legs' accounts by code, locked in ascending id order; an AccountSpec's account that
    does not exist yet is created first (a row nobody else can hold, so the order stands)."""
    codes = sorted({leg.account.code for leg in legs})
    locked = {a.code: a for a in LedgerAccount.objects.select_for_update().filter(code__in=codes).order_by("id")}
    missing = {leg.account.code: leg.account for leg in legs if leg.account.code not in locked}
    if not missing:
        return locked
    for code, account in missing.items():
        if not isinstance(account, AccountSpec):
            raise LedgerError(f"account {code} does not exist")
        LedgerAccount.objects.get_or_create(code=code, defaults={
            "kind": account.kind, "asset": account.asset, "user_id": account.user_id,
            "allow_negative": account.allow_negative})
    return {a.code: a for a in LedgerAccount.objects.select_for_update().filter(code__in=codes).order_by("id")}


def ledger_post(*, kind: str, legs: list[Leg], idempotency_key: str | None = None,
                reference: str = "", memo: str = "") -> LedgerTransaction:
    """Post one balanced transaction. Must run inside the caller's transaction.atomic().

    Locks every account of `legs` (ascending id). With an idempotency key already used for the
    same legs it returns the earlier transaction; for different legs it raises
    IdempotencyConflict. Raises InsufficientFunds when a non-issuer account would go negative.
    """
    for leg in legs:
        # bigint holds 2**63; refusing a quarter of that keeps every sum of legs and balances far
        # from overflow, so an absurd amount is a clear error, never a database crash.
        if not isinstance(leg.amount, int) or isinstance(leg.amount, bool) or abs(leg.amount) > MAX_AMOUNT:
            raise LedgerError(f"amount {leg.amount!r} is not an integer within ±{MAX_AMOUNT}")
    totals: dict[str, int] = defaultdict(int)
    for leg in legs:
        totals[leg.account.asset] += leg.amount
    if any(totals.values()):
        raise LedgerError(f"unbalanced transaction: {dict(totals)}")
    locked = _lock(legs)
    if any(locked[leg.account.code].asset != leg.account.asset for leg in legs):
        raise LedgerError("a leg's asset is not its account's asset")
    if idempotency_key:
        # Looked up under the account locks: a concurrent duplicate touches the same accounts,
        # so it waits here and then finds the committed transaction instead of inserting twice.
        earlier = LedgerTransaction.objects.filter(idempotency_key=idempotency_key).first()
        if earlier is not None:
            if not _same_movement(earlier, legs, locked):
                raise IdempotencyConflict(idempotency_key)
            return earlier
    deltas: dict[str, int] = defaultdict(int)
    for leg in legs:
        deltas[leg.account.code] += leg.amount
    for code, delta in deltas.items():
        account = locked[code]
        if not account.allow_negative and account.balance + delta < 0:
            raise InsufficientFunds(account, -delta)
    txn = LedgerTransaction.objects.create(kind=kind, idempotency_key=idempotency_key,
                                           reference=reference, memo=memo[:200])
    LedgerEntry.objects.bulk_create([
        LedgerEntry(transaction=txn, account_id=locked[leg.account.code].id, asset=locked[leg.account.code].asset,
                    amount=leg.amount)
        for leg in legs if leg.amount
    ])
    changed = {locked[code].id: delta for code, delta in deltas.items() if delta}
    for code, delta in deltas.items():
        locked[code].balance += delta
    _balances_add(changed)
    return txn


def _balances_add(deltas: dict[int, int]) -> None:
    """Add each delta to its account's balance in one statement (the accounts are locked). Raw
    SQL: the ORM's bulk_update builds a CASE expression whose compiling cost most of a posting's
    CPU (docs/benchmarks.md). VALUES columns are column1, column2 in PostgreSQL and SQLite alike."""
    if not deltas:
        return
    table = connection.ops.quote_name(LedgerAccount._meta.db_table)
    rows = ", ".join(["(CAST(%s AS BIGINT), CAST(%s AS BIGINT))"] * len(deltas))
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET balance = {table}.balance + v.column2 FROM (VALUES {rows}) AS v "
                       f"WHERE {table}.id = v.column1", [value for pair in deltas.items() for value in pair])
