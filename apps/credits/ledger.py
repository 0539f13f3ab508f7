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

from django.db import DatabaseError, IntegrityError, connection
from django.db.transaction import TransactionManagementError
from django.utils import timezone

from .models import AccountKind, Asset, LedgerAccount, LedgerEntry, LedgerTransaction

MAX_AMOUNT = 2**61
# Databases where a posting goes in one statement (_post_if_sound); elsewhere (SQLite, for
# `make run`) the portable path. Emptied by tests and benchmarks to run the portable path here too.
ONE_STATEMENT_VENDORS = {"postgresql"}
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


class PostingRefused(LedgerError):
    """ledger_post_committing's statement would have posted nothing (an account missing, funds
    short, an asset mismatched, the key used), so the transaction it was to commit aborted and
    wrote nothing. Run the transaction again with ledger_post, which posts or says why."""


# Raised by peer_posting_refused() (credits migration 0005) inside a committing posting.
POSTING_REFUSED_SQLSTATE = "PCL01"


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
    locked = _locked_accounts(codes)
    missing = {leg.account.code: leg.account for leg in legs if leg.account.code not in locked}
    if not missing:
        return locked
    for code, account in missing.items():
        if not isinstance(account, AccountSpec):
            raise LedgerError(f"account {code} does not exist")
        LedgerAccount.objects.get_or_create(code=code, defaults={
            "kind": account.kind, "asset": account.asset, "user_id": account.user_id,
            "allow_negative": account.allow_negative})
    return _locked_accounts(codes)


_LOCKED_COLUMNS = ("id", "code", "kind", "asset", "user_id", "balance", "allow_negative")


def _locked_accounts(codes: list[str]) -> dict[str, LedgerAccount]:
    """The accounts called `codes` by code, locked (FOR UPDATE) in ascending id order. Written as
    SQL: every posting runs it, and the ORM's building of this one query was about a twentieth of
    the node's Python time under load (docs/benchmarks.md). The instances hold only the columns
    a posting reads; any other loads on access."""
    if not connection.in_atomic_block:  # as the ORM's select_for_update refuses: a lock must last
        raise TransactionManagementError("a ledger posting runs inside transaction.atomic()")
    table = connection.ops.quote_name(LedgerAccount._meta.db_table)
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    sql = (f"SELECT {', '.join(_LOCKED_COLUMNS)} FROM {table} WHERE code IN ({', '.join(['%s'] * len(codes))}) "
           f"ORDER BY id{lock}")
    with connection.cursor() as cursor:
        cursor.execute(sql, codes)
        rows = cursor.fetchall()
    accounts = (LedgerAccount.from_db(connection.alias, _LOCKED_COLUMNS, row) for row in rows)
    return {account.code: account for account in accounts}


def ledger_post(*, kind: str, legs: list[Leg], idempotency_key: str | None = None,
                reference: str = "", memo: str = "") -> LedgerTransaction:
    """Post one balanced transaction. Must run inside the caller's transaction.atomic().

    Locks every account of `legs` (ascending id). With an idempotency key already used for the
    same legs it returns the earlier transaction; for different legs it raises
    IdempotencyConflict. Raises InsufficientFunds when a non-issuer account would go negative.
    """
    txn = _transaction_checked(kind=kind, legs=legs, idempotency_key=idempotency_key, reference=reference,
                               memo=memo)
    one_statement = connection.vendor in ONE_STATEMENT_VENDORS
    if one_statement and _post_if_sound(txn, legs):
        return txn
    # Not posted by that statement (an account missing, funds short, an asset mismatched or the
    # key used already; its locks are held), or not PostgreSQL: step by step, saying why.
    locked = _lock(legs)
    if any(locked[leg.account.code].asset != leg.account.asset for leg in legs):
        raise LedgerError("a leg's asset is not its account's asset")
    entries = [(locked[leg.account.code].id, locked[leg.account.code].asset, leg.amount) for leg in legs if leg.amount]
    # A posting that moves nothing has no entries for the one statement to insert: portable path.
    in_one_statement = one_statement and bool(entries)
    if idempotency_key and not in_one_statement:
        # Looked up under the account locks: a concurrent duplicate touches the same accounts,
        # so it waits here and then finds the committed transaction instead of inserting twice.
        # (On PostgreSQL the insert itself finds it: ON CONFLICT in _post_if_sound.)
        earlier = _earlier(idempotency_key, legs, locked)
        if earlier is not None:
            return earlier
    deltas: dict[str, int] = defaultdict(int)
    for leg in legs:
        deltas[leg.account.code] += leg.amount
    for code, delta in deltas.items():
        account = locked[code]
        if not account.allow_negative and account.balance + delta < 0:
            earlier = _earlier(idempotency_key, legs, locked) if idempotency_key and in_one_statement else None
            if earlier is not None:  # a repeat of a posting that already moved the money
                return earlier
            raise InsufficientFunds(account, -delta)
    if in_one_statement:
        # Every check above passed under the locks, so the statement posts unless the key was taken.
        if not _post_if_sound(txn, legs):
            earlier = _earlier(idempotency_key, legs, locked)  # the key was taken: by a posting of these legs?
            if earlier is None:
                raise LedgerError(f"transaction {idempotency_key!r} neither inserted nor found")
            return earlier
    else:
        txn.save(force_insert=True)
        LedgerEntry.objects.bulk_create([LedgerEntry(transaction=txn, account_id=account_id, asset=asset, amount=amount)
                                         for account_id, asset, amount in entries])
        _balances_add({locked[code].id: delta for code, delta in deltas.items() if delta})
    for code, delta in deltas.items():
        locked[code].balance += delta
    return txn


def ledger_post_committing(*, kind: str, legs: list[Leg], idempotency_key: str | None = None,
                           reference: str = "", memo: str = "") -> LedgerTransaction:
    """ledger_post as the last statement of the caller's outermost transaction.atomic(), sent
    with the transaction's COMMIT in one round trip on PostgreSQL, so the accounts' row locks
    last as long as the server takes and never a trip to the node and back. One user's accounts
    (every job holds and settles on them) and the treasury's (every settlement) are the rows all
    jobs queue for: held across a round trip, by a node thread then waiting for the GIL, they
    capped a node at ~70 jobs/s (docs/benchmarks.md).

    Posts as ledger_post would, and the transaction is committed on return. When the posting
    would not go through as it is (an account to create, funds short, the key used), the
    transaction aborts instead, having written nothing: PostingRefused, for the caller to run
    the transaction again with ledger_post. Inside an outer atomic block (a savepoint), on
    another database, or for legs that all move zero, it is ledger_post, committed by the block."""
    if not _commits_here() or not any(leg.amount for leg in legs):
        return ledger_post(kind=kind, legs=legs, idempotency_key=idempotency_key, reference=reference, memo=memo)
    txn = _transaction_checked(kind=kind, legs=legs, idempotency_key=idempotency_key, reference=reference,
                               memo=memo)
    _post_if_sound(txn, legs, commit=True)
    return txn


def _commits_here() -> bool:
    """Whether a posting may send the COMMIT itself: PostgreSQL through psycopg 3, in the
    outermost atomic block (never a savepoint: a test's transaction or a caller's outer block)."""
    return (connection.vendor in ONE_STATEMENT_VENDORS and len(connection.atomic_blocks) == 1
            and not connection.savepoint_ids and hasattr(connection.connection, "pipeline"))


def _transaction_checked(*, kind: str, legs: list[Leg], idempotency_key: str | None, reference: str,
                         memo: str) -> LedgerTransaction:
    """The transaction to post for `legs`, once they are integers in range that balance."""
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
    return LedgerTransaction(kind=kind, idempotency_key=idempotency_key, reference=reference, memo=memo[:200],
                             created_at=timezone.now())


def _earlier(idempotency_key: str, legs: list[Leg], locked: dict[str, LedgerAccount]) -> LedgerTransaction | None:
    """The transaction already posted under `idempotency_key`, if it moved the same legs; raises
    IdempotencyConflict if it moved others."""
    earlier = LedgerTransaction.objects.filter(idempotency_key=idempotency_key).first()
    if earlier is not None and not _same_movement(earlier, legs, locked):
        raise IdempotencyConflict(idempotency_key)
    return earlier


def _post_if_sound(txn: LedgerTransaction, legs: list[Leg], commit: bool = False) -> bool:
    """PostgreSQL: lock the legs' accounts (ascending id, as _lock), check them and post, all in
    one statement: one round trip where a lock and then the writes would be two (docs/benchmarks.md).
    Posts only when every account exists, holds the leg's asset and stays at or above zero
    unless it may go negative, and the idempotency key is new: True, txn.id set. Otherwise it
    writes nothing and returns False, the accounts locked, for ledger_post's careful path.
    With `commit` (ledger_post_committing) it sends the transaction's COMMIT along, and instead
    of posting nothing it aborts the transaction: PostingRefused."""
    entries = [(leg.account.code, leg.amount) for leg in legs if leg.amount]
    if not entries or not connection.in_atomic_block:  # the careful path says what is wrong
        return False
    deltas: dict[str, int] = defaultdict(int)
    for leg in legs:
        deltas[leg.account.code] += leg.amount
    assets = {leg.account.code: leg.account.asset for leg in legs}
    quote = connection.ops.quote_name
    txns, rows, accounts = (quote(m._meta.db_table) for m in (LedgerTransaction, LedgerEntry, LedgerAccount))
    # ORDER BY id FOR UPDATE: the rows are locked in id order, as every posting locks them.
    sql = (f"WITH locked AS (SELECT id, code, asset, balance, allow_negative FROM {accounts} "
           f"WHERE code IN ({', '.join(['%s'] * len(deltas))}) ORDER BY id FOR UPDATE), "
           f"legs (code, asset, delta) AS (VALUES "
           + ", ".join(["(CAST(%s AS VARCHAR), CAST(%s AS VARCHAR), CAST(%s AS BIGINT))"] * len(deltas)) + "), "
           f"sound AS (SELECT count(*) = %s AND coalesce(bool_and(l.asset = g.asset "
           f"AND (l.allow_negative OR l.balance + g.delta >= 0)), false) AS ok "
           f"FROM locked l JOIN legs g ON g.code = l.code), "
           f"posted AS (INSERT INTO {txns} (kind, idempotency_key, reference, memo, created_at) "
           f"SELECT CAST(%s AS VARCHAR), CAST(%s AS VARCHAR), CAST(%s AS VARCHAR), CAST(%s AS VARCHAR), "
           f"CAST(%s AS TIMESTAMPTZ) FROM sound WHERE sound.ok "
           f"ON CONFLICT (idempotency_key) DO NOTHING RETURNING id), "
           f"entries AS (INSERT INTO {rows} (transaction_id, account_id, asset, amount, created_at) "
           f"SELECT posted.id, l.id, l.asset, e.amount, CAST(%s AS TIMESTAMPTZ) FROM posted, (VALUES "
           + ", ".join(["(CAST(%s AS VARCHAR), CAST(%s AS BIGINT))"] * len(entries)) + ") AS e (code, amount) "
           f"JOIN locked l ON l.code = e.code), "
           # Every data-modifying part of a WITH runs once, to completion, whether the outer query
           # reads it or not; joined with `posted`, the balances move only if it inserted.
           f"balances AS (UPDATE {accounts} SET balance = {accounts}.balance + g.delta FROM posted, legs g "
           f"JOIN locked l ON l.code = g.code WHERE {accounts}.id = l.id AND g.delta <> 0) "
           + ("SELECT COALESCE((SELECT id FROM posted), peer_posting_refused())" if commit else "SELECT id FROM posted"))
    params = [*deltas, *[value for code, delta in deltas.items() for value in (code, assets[code], delta)],
              len(deltas), txn.kind, txn.idempotency_key, txn.reference, txn.memo, txn.created_at,
              txn.created_at, *[value for entry in entries for value in entry]]
    return _posted(txn, sql, params, commit=commit)


def _posted(txn: LedgerTransaction, sql: str, params: list, commit: bool = False) -> bool:
    """Run a posting's statement (it returns the new transaction's id, or no row when it posted
    nothing): True and txn.id set when it posted. With `commit`, the transaction's COMMIT goes
    in the same round trip (psycopg's pipeline mode) and the server commits as soon as the
    statement ends; a statement that raised (the posting refused: PostingRefused) leaves the
    transaction aborted and the COMMIT unrun, for Django's atomic block, left by the exception,
    to roll back. Django's own COMMIT at the block's end then finds nothing to do."""
    with connection.cursor() as cursor:
        if commit:
            _execute_and_commit(cursor, sql, params)
        else:
            cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return False
    txn.id = row[0]
    txn._state.adding, txn._state.db = False, connection.alias
    return True


def _execute_and_commit(cursor, sql: str, params: list) -> None:
    pg = connection.connection
    try:
        # Errors surface at the pipeline's sync, outside the cursor's own wrapping: wrapped here,
        # so callers see Django's exceptions as from any other statement.
        with connection.wrap_database_errors, pg.pipeline():
            cursor.execute(sql, params)
            pg.commit()
    except DatabaseError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == POSTING_REFUSED_SQLSTATE:
            raise PostingRefused(str(exc.__cause__).strip()) from None
        raise


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
