"""$PEER writes: genesis and grants, stake / unstake / claim, worker bonds, slashing, epochs.

Every public service opens its own `transaction.atomic(durable=True)`, so none may be called
inside another atomic block. All of them lock in one order: staking rows first (the epoch row,
then unstake requests ascending by id), then ledger accounts ascending by id (ledger_post's
order). With one order no two movements can wait on each other in a cycle.

Amounts are integers in PEER base units (9 decimals); the epoch pays micro-USDC.
"""

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.credits.ledger import (
    PEER_BURNED_CODE, PEER_ISSUER_CODE, STAKERS_POOL_CODE, IdempotencyConflict, Leg, account_get_or_create,
    ledger_post, system_account)
from apps.credits.models import AccountKind, Asset, LedgerAccount, LedgerTransaction
from apps.credits.services import user_account
from apps.workers.roster import roster_changed

from .codes import PEER_TREASURY_CODE, bond_code, liquid_code, staked_code, unbonding_code, unstaking_code
from .distribution import pro_rata
from .models import Epoch, Slash, UnstakeRequest

GENESIS_KEY = "peer:genesis"


class StakingError(Exception):
    """A refused staking operation; `code` names the reason for API clients."""

    code = "refused"


class CooldownNotOver(StakingError):
    code = "cooldown"

    def __init__(self, available_at: datetime):
        super().__init__(f"cooldown until {available_at.isoformat()}")
        self.available_at = available_at


class AlreadyClaimed(StakingError):
    code = "already_claimed"


class NothingToClaim(StakingError):
    code = "slashed"


class SlashExceedsBond(StakingError):
    code = "exceeds_bond"


# --- accounts -----------------------------------------------------------------------------

def peer_treasury_account() -> LedgerAccount:
    return account_get_or_create(code=PEER_TREASURY_CODE, kind=AccountKind.TREASURY, asset=Asset.PEER)


def peer_liquid_account(*, user) -> LedgerAccount:
    return account_get_or_create(code=liquid_code(user.pk), kind=AccountKind.USER, asset=Asset.PEER, user=user)


def peer_staked_account(*, user) -> LedgerAccount:
    return account_get_or_create(code=staked_code(user.pk), kind=AccountKind.STAKED, asset=Asset.PEER, user=user)


def peer_unstaking_account(*, user) -> LedgerAccount:
    return account_get_or_create(code=unstaking_code(user.pk), kind=AccountKind.UNSTAKING, asset=Asset.PEER,
                                 user=user)


def worker_bond_account(*, worker) -> LedgerAccount:
    return account_get_or_create(code=bond_code(worker.pk), kind=AccountKind.BOND, asset=Asset.PEER,
                                 user=worker.operator)


def worker_unbonding_account(*, worker) -> LedgerAccount:
    """Bond released but still in its cooldown: slashable, not counted as the worker's bond."""
    return account_get_or_create(code=unbonding_code(worker.pk), kind=AccountKind.UNSTAKING, asset=Asset.PEER,
                                 user=worker.operator)


# --- helpers ------------------------------------------------------------------------------

def _check_amount(amount) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValueError(f"an amount is an integer of PEER base units, not {amount!r}")
    if amount <= 0:
        raise ValueError("an amount must be positive")


def _post(*, kind: str, legs: list[Leg], idempotency_key: str | None, reference: str,
          memo: str = "") -> LedgerTransaction:
    """ledger_post, plus: a key that answered with a movement made for something else (same
    legs, other reference, e.g. another unstake request's claim) is a conflict, not a replay."""
    txn = ledger_post(kind=kind, legs=legs, idempotency_key=idempotency_key, reference=reference, memo=memo)
    roster_changed()  # a bond that changed may change which workers the verified tier routes to
    if txn.reference != reference:
        raise IdempotencyConflict(idempotency_key)
    return txn


def _lock_accounts(accounts) -> dict[int, LedgerAccount]:
    """Lock accounts ascending by id (ledger_post's order) and return them fresh, by id."""
    ids = sorted({a.id for a in accounts if a is not None})
    return {a.id: a for a in LedgerAccount.objects.select_for_update().filter(id__in=ids).order_by("id")}


def _request_for(*, txn: LedgerTransaction, user, source: str, worker, amount: int, now) -> UnstakeRequest:
    """The request row of a stake/bond release movement; a replayed movement finds its row.

    Runs under the movement's account locks, so a concurrent replay waits and finds it too."""
    existing = UnstakeRequest.objects.filter(request_transaction=txn).first()
    if existing is not None:
        return existing
    return UnstakeRequest.objects.create(
        user=user, source=source, worker=worker, amount=amount, requested_at=now,
        available_at=now + timedelta(seconds=settings.PEER_UNSTAKE_COOLDOWN_SECONDS), request_transaction=txn)


# --- supply -------------------------------------------------------------------------------

def _genesis_in_atomic() -> LedgerTransaction:
    supply = settings.PEER_INITIAL_SUPPLY
    return ledger_post(kind="peer_genesis", idempotency_key=GENESIS_KEY, reference="peer:genesis",
                       memo="$PEER initial supply",
                       legs=[Leg(system_account(PEER_ISSUER_CODE), -supply), Leg(peer_treasury_account(), supply)])


def peer_mint_initial_supply() -> LedgerTransaction:
    """Mint PEER_INITIAL_SUPPLY from the issuer into the $PEER treasury, once ever.

    Idempotent by the key "peer:genesis": later calls return the first transaction (a changed
    PEER_INITIAL_SUPPLY then raises IdempotencyConflict). Locks the issuer and the treasury."""
    with transaction.atomic(durable=True):
        return _genesis_in_atomic()


def peer_grant(*, user, amount: int, idempotency_key: str | None = None, memo: str = "") -> LedgerTransaction:
    """Give `amount` liquid PEER from the treasury (demo and tests); mints the genesis first if
    it has not been (then locking the issuer and the treasury first: only grants take those two,
    so this cannot cycle). Locks the treasury and the user's liquid account."""
    _check_amount(amount)
    treasury, liquid = peer_treasury_account(), peer_liquid_account(user=user)
    minted = LedgerTransaction.objects.filter(idempotency_key=GENESIS_KEY).exists()
    with transaction.atomic(durable=True):
        if not minted:  # otherwise every grant would queue on the issuer's lock for nothing
            _genesis_in_atomic()
        return _post(kind="peer_grant", idempotency_key=idempotency_key, reference=f"peer:grant:user:{user.pk}",
                     memo=memo, legs=[Leg(treasury, -amount), Leg(liquid, amount)])


# --- stake / unstake ----------------------------------------------------------------------

def peer_stake(*, user, amount: int, idempotency_key: str | None = None) -> LedgerTransaction:
    """Liquid -> staked. Raises InsufficientFunds. Locks the user's liquid and staked accounts."""
    _check_amount(amount)
    liquid, staked = peer_liquid_account(user=user), peer_staked_account(user=user)
    with transaction.atomic(durable=True):
        return _post(kind="peer_stake", idempotency_key=idempotency_key, reference=f"peer:stake:user:{user.pk}",
                     legs=[Leg(liquid, -amount), Leg(staked, amount)])


def unstake_request(*, user, amount: int, idempotency_key: str | None = None, now=None) -> UnstakeRequest:
    """Staked -> unstaking now; claimable after PEER_UNSTAKE_COOLDOWN_SECONDS. Unstaking $PEER
    earns nothing in epochs. Raises InsufficientFunds. Locks the user's staked and unstaking accounts."""
    _check_amount(amount)
    now = now or timezone.now()
    staked, unstaking = peer_staked_account(user=user), peer_unstaking_account(user=user)
    with transaction.atomic(durable=True):
        txn = _post(kind="peer_unstake", idempotency_key=idempotency_key, reference=f"peer:unstake:user:{user.pk}",
                    legs=[Leg(staked, -amount), Leg(unstaking, amount)])
        return _request_for(txn=txn, user=user, source=UnstakeRequest.Source.STAKE, worker=None,
                            amount=amount, now=now)


def unstake_claim(*, user, request_id: int, idempotency_key: str | None = None, now=None) -> UnstakeRequest:
    """Pay a pending request (a stake's unstake or a bond release) into the user's liquid PEER
    once its cooldown is over, exactly once.

    Raises UnstakeRequest.DoesNotExist (not the user's), CooldownNotOver, AlreadyClaimed or
    NothingToClaim (slashed away). Locks the request row, then the source and liquid accounts.
    """
    now = now or timezone.now()
    reference = f"peer:claim:{request_id}"
    key = idempotency_key or reference
    _refuse_a_key_used_elsewhere(key, reference)
    with transaction.atomic(durable=True):
        # The conditional UPDATE is the claim: its row lock makes a racing claim (or a slash of
        # a bond release) wait, and the loser's WHERE, re-checked after the winner commits,
        # matches nothing.
        won = UnstakeRequest.objects.filter(id=request_id, user=user, state=UnstakeRequest.State.PENDING,
                                            available_at__lte=now).update(state=UnstakeRequest.State.CLAIMED,
                                                                          claimed_at=now)
        request = (UnstakeRequest.objects.select_related("worker__operator", "claim_transaction")
                   .filter(id=request_id, user=user).first())
        if request is None:
            raise UnstakeRequest.DoesNotExist(f"no unstake request {request_id} of this user")
        if not won:
            return _claim_refused(request, idempotency_key)
        if request.source == UnstakeRequest.Source.STAKE:
            source = peer_unstaking_account(user=user)
        else:
            source = worker_unbonding_account(worker=request.worker)
        txn = _post(kind="peer_unstake_claim", idempotency_key=key, reference=reference,
                    legs=[Leg(source, -request.payable), Leg(peer_liquid_account(user=user), request.payable)])
        request.claim_transaction = txn
        request.save(update_fields=["claim_transaction"])
        return request


def _refuse_a_key_used_elsewhere(key: str, reference: str) -> None:
    # An early answer only; _post's check under the account locks is the one that holds in a race.
    earlier = LedgerTransaction.objects.filter(idempotency_key=key).only("reference").first()
    if earlier is not None and earlier.reference != reference:
        raise IdempotencyConflict(key)


def _claim_refused(request: UnstakeRequest, idempotency_key: str | None) -> UnstakeRequest:
    if request.state == UnstakeRequest.State.CLAIMED:
        if idempotency_key and request.claim_transaction.idempotency_key == idempotency_key:
            return request  # the caller's own claim replayed with its key: the same answer
        raise AlreadyClaimed(f"unstake request {request.id} was already claimed at {request.claimed_at.isoformat()}")
    if request.state == UnstakeRequest.State.SLASHED:
        raise NothingToClaim(f"unstake request {request.id} was slashed entirely during its cooldown")
    raise CooldownNotOver(request.available_at)


# --- bonds --------------------------------------------------------------------------------

def bond_lock(*, worker, amount: int, idempotency_key: str | None = None) -> LedgerTransaction:
    """Lock `amount` of the operator's *liquid* PEER as the worker's bond (staked PEER is not
    touched: a stake earns epochs, a bond is what a fault may take). Raises InsufficientFunds.
    Locks the operator's liquid account and the worker's bond account."""
    _check_amount(amount)
    liquid, bond = peer_liquid_account(user=worker.operator), worker_bond_account(worker=worker)
    with transaction.atomic(durable=True):
        return _post(kind="peer_bond_lock", idempotency_key=idempotency_key, reference=f"peer:bond:{worker.pk}",
                     legs=[Leg(liquid, -amount), Leg(bond, amount)])


def bond_release(*, worker, amount: int, idempotency_key: str | None = None, now=None) -> UnstakeRequest:
    """Move `amount` of the bond into the worker's unbonding account, claimable by the operator
    (unstake_claim) after the unstake cooldown. Until claimed it no longer counts toward
    worker_bond_sufficient but a slash can still take it, so a fault found late is still paid.
    Raises InsufficientFunds. Locks the worker's bond and unbonding accounts."""
    _check_amount(amount)
    now = now or timezone.now()
    bond, unbonding = worker_bond_account(worker=worker), worker_unbonding_account(worker=worker)
    with transaction.atomic(durable=True):
        txn = _post(kind="peer_bond_release", idempotency_key=idempotency_key, reference=f"peer:unbond:{worker.pk}",
                    legs=[Leg(bond, -amount), Leg(unbonding, amount)])
        return _request_for(txn=txn, user=worker.operator, source=UnstakeRequest.Source.BOND, worker=worker,
                            amount=amount, now=now)


# --- slashing -----------------------------------------------------------------------------

def bond_slash(*, worker, amount: int, challenger=None, reason: str, idempotency_key: str) -> Slash:
    """Take `amount` from the worker's bond for one proven fault: PEER_SLASH_CHALLENGER_PERCENT
    (floored) to the challenger's liquid PEER, the rest burned (all of it without a challenger).

    The bond is the locked bond plus releases still in cooldown (taken newest first, after the
    locked part). More than that raises SlashExceedsBond and moves nothing. The same key again
    returns the first Slash; with other terms it raises IdempotencyConflict. Locks the worker's
    pending bond releases, then its bond, unbonding, the burn and the challenger's accounts.
    """
    _check_amount(amount)
    if not idempotency_key:
        raise ValueError("a slash needs an idempotency key, one per proven fault")
    if challenger is not None and challenger.pk == worker.operator_id:
        raise StakingError("a worker's operator cannot be the challenger of its own worker")
    percent = settings.PEER_SLASH_CHALLENGER_PERCENT
    if not 0 <= percent <= 100:
        raise ImproperlyConfigured("PEER_SLASH_CHALLENGER_PERCENT must be within 0..100")
    to_challenger = amount * percent // 100 if challenger is not None else 0
    bond, unbonding = worker_bond_account(worker=worker), worker_unbonding_account(worker=worker)
    burn = system_account(PEER_BURNED_CODE)
    reward = peer_liquid_account(user=challenger) if challenger is not None else None
    with transaction.atomic(durable=True):
        releases = list(UnstakeRequest.objects.select_for_update()
                        .filter(worker=worker, source=UnstakeRequest.Source.BOND, state=UnstakeRequest.State.PENDING)
                        .order_by("id"))
        locked = _lock_accounts([bond, unbonding, burn, reward])
        earlier = Slash.objects.filter(idempotency_key=idempotency_key).first()
        if earlier is not None:
            if (earlier.worker_id, earlier.amount, earlier.challenger_id) != (
                    worker.pk, amount, challenger.pk if challenger is not None else None):
                raise IdempotencyConflict(idempotency_key)
            return earlier
        on_bond, releasing = locked[bond.id].balance, locked[unbonding.id].balance
        if amount > on_bond + releasing:
            raise SlashExceedsBond(f"a slash of {amount} exceeds the worker's bond of {on_bond + releasing} "
                                   f"({on_bond} locked + {releasing} releasing); nothing was slashed")
        from_bond = min(amount, on_bond)
        _slash_releases(releases, amount - from_bond)
        legs = [Leg(bond, -from_bond), Leg(unbonding, -(amount - from_bond)), Leg(burn, amount - to_challenger)]
        if reward is not None:
            legs.append(Leg(reward, to_challenger))
        txn = _post(kind="peer_slash", idempotency_key=idempotency_key, reference=f"peer:slash:{worker.pk}",
                    memo=reason, legs=legs)
        return Slash.objects.create(worker=worker, challenger=challenger, amount=amount, to_challenger=to_challenger,
                                    burned=amount - to_challenger, from_bond=from_bond,
                                    from_unbonding=amount - from_bond, reason=reason[:200],
                                    idempotency_key=idempotency_key, transaction=txn)


def _slash_releases(releases: list[UnstakeRequest], amount: int) -> None:
    """Take `amount` from pending bond releases, newest first (they hold the unbonding balance)."""
    for release in reversed(releases):
        if amount <= 0:
            return
        take = min(release.payable, amount)
        release.slashed += take
        amount -= take
        if release.payable == 0:
            release.state = UnstakeRequest.State.SLASHED
        release.save(update_fields=["slashed", "state"])


# --- epochs -------------------------------------------------------------------------------

def epoch_number_ended_by(now: datetime) -> int:
    """The last epoch wholly over at `now` (epochs are aligned to the Unix epoch)."""
    return int(now.timestamp()) // settings.PEER_EPOCH_SECONDS - 1


def epoch_close(*, now=None) -> Epoch:
    """Close the last epoch ended by `now`: pay the USDC stakers' pool to stakers pro rata to
    their staked PEER at close, each share floored, into their spendable USDC credits.

    The floor remainder (fewer micro-USDC than stakers) stays in the pool for the next epoch;
    with nobody staked the pool is left alone. A closed epoch is never paid again: its row is
    inserted first, so a retried or concurrent close waits on it and returns it. Locks the
    epoch row, every non-empty staked account, then the pool and the stakers' USDC accounts.
    """
    now = now or timezone.now()
    number = epoch_number_ended_by(now)
    length = settings.PEER_EPOCH_SECONDS
    with transaction.atomic(durable=True):
        try:
            with transaction.atomic():
                epoch = Epoch.objects.create(number=number, closed_at=now,
                                             started_at=datetime.fromtimestamp(number * length, tz=UTC),
                                             ended_at=datetime.fromtimestamp((number + 1) * length, tz=UTC))
        except IntegrityError:
            return Epoch.objects.get(number=number)
        # Locked so that no stake moves between the snapshot and the payment.
        stakes = dict(LedgerAccount.objects.select_for_update()
                      .filter(kind=AccountKind.STAKED, asset=Asset.PEER, balance__gt=0)
                      .order_by("id").values_list("user_id", "balance"))
        users = get_user_model().objects.in_bulk(list(stakes))
        credits = {user_id: user_account(user=users[user_id]) for user_id in stakes}
        pool = system_account(STAKERS_POOL_CODE)
        pool_amount = _lock_accounts([pool, *credits.values()])[pool.id].balance
        shares = pro_rata(pool_amount, stakes)
        distributed = sum(shares.values())
        if distributed:
            epoch.transaction = _post(
                kind="peer_epoch", idempotency_key=f"peer:epoch:{number}", reference=f"peer:epoch:{number}",
                legs=[Leg(pool, -distributed)] + [Leg(credits[u], share) for u, share in shares.items()])
        epoch.pool_amount, epoch.distributed, epoch.remainder = pool_amount, distributed, pool_amount - distributed
        epoch.total_staked, epoch.stakers = sum(stakes.values()), len(stakes)
        epoch.save(update_fields=["transaction", "pool_amount", "distributed", "remainder", "total_staked",
                                  "stakers"])
        return epoch
