"""Credits: grants, holds and settlements of jobs, on top of the ledger core (ledger.py).

Every public service here opens its own durable transaction, or says that its caller must.
"""

from django.db import transaction

from .ledger import (  # noqa: F401  (re-exported: the ledger's API lives with the credits)
    EXTERNAL_USDC_CODE, PAYOUTS_PENDING_CODE, PEER_BURNED_CODE, PEER_ISSUER_CODE, PROMO_CODE,
    STAKERS_POOL_CODE, TREASURY_CODE, AccountSpec, IdempotencyConflict, InsufficientFunds, Leg, LedgerError,
    PostingRefused, account_get_or_create, ledger_post, ledger_post_committing, system_account, system_spec)
from .models import AccountKind, LedgerAccount, LedgerTransaction
from .pricing import credits_to_micro, split_capture, validator_pay


def user_account(*, user) -> LedgerAccount:
    return account_get_or_create(code=f"user:{user.pk}:USDC", kind=AccountKind.USER, user=user)


def user_held_account(*, user) -> LedgerAccount:
    return account_get_or_create(code=f"user:{user.pk}:held:USDC", kind=AccountKind.HELD, user=user)


def worker_account(*, worker) -> LedgerAccount:
    return account_get_or_create(code=f"worker:{worker.pk}:USDC", kind=AccountKind.WORKER,
                                 user=worker.operator)


# The same accounts as specs, for the postings of every job: named, not read (ledger.AccountSpec).
def _user_spec(user_id) -> AccountSpec:
    return AccountSpec(code=f"user:{user_id}:USDC", kind=AccountKind.USER, user_id=user_id)


def _user_held_spec(user_id) -> AccountSpec:
    return AccountSpec(code=f"user:{user_id}:held:USDC", kind=AccountKind.HELD, user_id=user_id)


def _worker_spec(worker) -> AccountSpec:
    return AccountSpec(code=f"worker:{worker.pk}:USDC", kind=AccountKind.WORKER, user_id=worker.operator_id)


def credits_grant(*, user, credits: int, memo: str = "", idempotency_key: str | None = None) -> LedgerTransaction:
    """Promotional credits from the treasury's promo (issuer) account to the user."""
    if credits <= 0:
        raise ValueError("a grant is positive")
    amount = credits_to_micro(credits)
    promo, account = system_account(PROMO_CODE), user_account(user=user)
    with transaction.atomic(durable=True):
        return ledger_post(kind="grant", idempotency_key=idempotency_key, memo=memo,
                           legs=[Leg(promo, -amount), Leg(account, amount)])


def credits_hold_in_atomic(*, user, amount: int, reference: str, commits: bool = False) -> LedgerTransaction:
    """Move `amount` from the user's credits to their held account. Caller holds an atomic block.
    With `commits`, the block's last statement, committing it (ledger_post_committing: it may
    raise PostingRefused, for the caller to run the block again without)."""
    available, held = _user_spec(user.pk), _user_held_spec(user.pk)
    post = ledger_post_committing if commits else ledger_post
    return post(kind="hold", reference=reference, idempotency_key=f"{reference}:hold",
                       legs=[Leg(available, -amount), Leg(held, amount)])


def credits_settle_in_atomic(*, user, held_amount: int, charge: int, worker, reference: str,
                             commits: bool = False) -> LedgerTransaction:
    """Capture `charge` of a hold (70/24/6 split) and release the rest, in one transaction.

    A charge of zero is a full refund. The idempotency key is per reference, so a hold is
    settled exactly once whichever path (relay, reaper) gets there first. `commits` as
    credits_hold_in_atomic's.
    """
    if not 0 <= charge <= held_amount:
        raise LedgerError(f"charge {charge} outside the hold 0..{held_amount}")
    held, available = _user_held_spec(user.pk), _user_spec(user.pk)
    legs = [Leg(held, -held_amount), Leg(available, held_amount - charge)]
    if charge:
        split = split_capture(charge)
        legs += [Leg(_worker_spec(worker), split.worker), Leg(system_spec(STAKERS_POOL_CODE), split.stakers_pool),
                 Leg(system_spec(TREASURY_CODE), split.treasury)]
    post = ledger_post_committing if commits else ledger_post
    return post(kind="capture" if charge else "refund", reference=reference, idempotency_key=f"{reference}:settle",
                legs=legs)


def credits_hold_release_in_atomic(*, user, amount: int, reference: str, forfeit: bool) -> LedgerTransaction:
    """End a hold that is not a job's: back to the user's credits, or, when `forfeit`, to the
    treasury (a rejected challenge's bond). Once per reference. Caller holds an atomic block."""
    held = _user_held_spec(user.pk)
    to = system_spec(TREASURY_CODE) if forfeit else _user_spec(user.pk)
    return ledger_post(kind="hold_forfeit" if forfeit else "refund", reference=reference,
                       idempotency_key=f"{reference}:settle", legs=[Leg(held, -amount), Leg(to, amount)])


def validator_pay_for_reexecution(*, validator, job_price: int, reference: str) -> LedgerTransaction:
    """Pay the validator worker for re-executing a job, from the treasury (the margin's 20%).

    Idempotent per `reference` (e.g. "validation:<job uuid>:<validator uuid>"). Raises
    InsufficientFunds when the treasury cannot cover it: nothing moves, the caller retries later.
    """
    amount = validator_pay(job_price)
    treasury, earnings = system_account(TREASURY_CODE), worker_account(worker=validator)
    with transaction.atomic(durable=True):
        return ledger_post(kind="validator_pay", reference=reference, idempotency_key=f"{reference}:pay",
                           legs=[Leg(treasury, -amount), Leg(earnings, amount)])
