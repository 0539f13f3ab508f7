"""$PEER staking reads: balances, history, unstake requests, supply, bonds, the stakers' pool.

Reads never create ledger accounts: an account nobody has moved money through reads as 0.
"""

from django.conf import settings
from django.db.models import Sum

from apps.credits.ledger import PEER_BURNED_CODE, PEER_ISSUER_CODE
from apps.credits.models import AccountKind, Asset, LedgerAccount, LedgerEntry
from apps.credits.services import STAKERS_POOL_CODE, TREASURY_CODE
from apps.workers.models import Worker

from .codes import PEER_TREASURY_CODE, bond_code, liquid_code, staked_code, unbonding_code, unstaking_code
from .models import Epoch, Slash, UnstakeRequest


def _balances(codes: list[str]) -> dict[str, int]:
    found = dict(LedgerAccount.objects.filter(code__in=codes).values_list("code", "balance"))
    return {code: found.get(code, 0) for code in codes}


def _balance(code: str) -> int:
    return _balances([code])[code]


def stakers_pool_balance() -> int:
    """micro-USDC waiting in the stakers' pool for the next epoch."""
    return _balance(STAKERS_POOL_CODE)


def treasury_balance() -> int:
    return _balance(TREASURY_CODE)


def peer_balances(*, user) -> dict:
    """The user's liquid, staked and unstaking PEER and, per worker they operate, its bond
    (locked, and releasing in its cooldown)."""
    own = _balances([liquid_code(user.pk), staked_code(user.pk), unstaking_code(user.pk)])
    workers = list(Worker.objects.filter(operator=user).order_by("created_at").values_list("id", "name"))
    bonds = _balances([code for worker_id, _ in workers for code in (bond_code(worker_id), unbonding_code(worker_id))])
    return {
        "liquid": own[liquid_code(user.pk)],
        "staked": own[staked_code(user.pk)],
        "unstaking": own[unstaking_code(user.pk)],
        "bonds": [{"worker_id": worker_id, "worker_name": name, "locked": bonds[bond_code(worker_id)],
                   "releasing": bonds[unbonding_code(worker_id)]} for worker_id, name in workers],
    }


def peer_entries_for_user(*, user, limit: int = 50, before: int | None = None):
    """The user's PEER ledger entries (liquid, staked, unstaking, their workers' bonds), newest first."""
    entries = LedgerEntry.objects.filter(account__user=user, asset=Asset.PEER)
    if before is not None:
        entries = entries.filter(id__lt=before)
    return entries.select_related("transaction", "account").order_by("-id")[:limit]


def unstake_requests_for_user(*, user, limit: int = 100):
    return UnstakeRequest.objects.filter(user=user).order_by("-id")[:limit]


def peer_supply() -> dict:
    """Totals in PEER base units: circulating = minted - burned; staked, unstaking (stakes and
    bonds in cooldown), bonded (locked bonds) and the treasury are parts of circulating."""
    peer = LedgerAccount.objects.filter(asset=Asset.PEER)
    by_kind = dict(peer.values_list("kind").annotate(total=Sum("balance")))
    minted = -_balance(PEER_ISSUER_CODE)
    burned = _balance(PEER_BURNED_CODE)
    return {
        "minted": minted,
        "burned": burned,
        "circulating": minted - burned,
        "staked": by_kind.get(AccountKind.STAKED, 0),
        "unstaking": by_kind.get(AccountKind.UNSTAKING, 0),
        "bonded": by_kind.get(AccountKind.BOND, 0),
        "treasury": _balance(PEER_TREASURY_CODE),
    }


def worker_bond_get(*, worker) -> int:
    """PEER locked as the worker's bond (releases in cooldown do not count)."""
    return _balance(bond_code(worker.pk))


def worker_bond_sufficient(*, worker) -> bool:
    """Whether the worker's locked bond reaches PEER_VERIFIED_BOND (required for the verified tier)."""
    return worker_bond_get(worker=worker) >= settings.PEER_VERIFIED_BOND


def workers_with_sufficient_bond(*, worker_ids) -> set:
    """The ids among `worker_ids` whose locked bond reaches PEER_VERIFIED_BOND, in one query
    (for routing over many candidates)."""
    codes = {bond_code(worker_id): worker_id for worker_id in worker_ids}
    return {codes[code] for code in LedgerAccount.objects.filter(
        code__in=list(codes), balance__gte=settings.PEER_VERIFIED_BOND).values_list("code", flat=True)}


def slashes_for_worker(*, worker):
    return Slash.objects.filter(worker=worker).order_by("-id")


def epochs_recent(*, limit: int = 20):
    return Epoch.objects.order_by("-number")[:limit]
