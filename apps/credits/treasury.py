"""Reads for the treasury console: supply, burns, pools and balances, all from the ledger."""

from dataclasses import dataclass

from django.db.models import Sum

from .ledger import (EXTERNAL_USDC_CODE, PAYOUTS_PENDING_CODE, PEER_BURNED_CODE, PEER_ISSUER_CODE,
                     PROMO_CODE, STAKERS_POOL_CODE, TREASURY_CODE)
from .models import AccountKind, Asset, LedgerAccount, LedgerTransaction


@dataclass(frozen=True)
class TreasuryOverview:
    peer_minted: int
    peer_burned: int
    peer_circulating: int
    peer_staked: int
    peer_bonded: int
    usdc_deposited: int  # net USDC that entered from the chain (deposits + x402 - paid out)
    usdc_user_credits: int
    usdc_held: int
    usdc_worker_earnings: int
    usdc_payouts_pending: int
    usdc_stakers_pool: int
    usdc_treasury: int
    usdc_promo_granted: int


def _balance(code: str) -> int:
    return LedgerAccount.objects.filter(code=code).values_list("balance", flat=True).first() or 0


def _kind_total(kind: str, asset: str = Asset.USDC) -> int:
    return LedgerAccount.objects.filter(kind=kind, asset=asset).aggregate(total=Sum("balance"))["total"] or 0


def treasury_overview() -> TreasuryOverview:
    minted, burned = -_balance(PEER_ISSUER_CODE), _balance(PEER_BURNED_CODE)
    return TreasuryOverview(
        peer_minted=minted, peer_burned=burned, peer_circulating=minted - burned,
        peer_staked=_kind_total(AccountKind.STAKED, Asset.PEER),
        peer_bonded=_kind_total(AccountKind.BOND, Asset.PEER),
        usdc_deposited=-_balance(EXTERNAL_USDC_CODE),
        usdc_user_credits=_kind_total(AccountKind.USER), usdc_held=_kind_total(AccountKind.HELD),
        usdc_worker_earnings=_kind_total(AccountKind.WORKER),
        usdc_payouts_pending=_balance(PAYOUTS_PENDING_CODE),
        usdc_stakers_pool=_balance(STAKERS_POOL_CODE), usdc_treasury=_balance(TREASURY_CODE),
        usdc_promo_granted=-_balance(PROMO_CODE),
    )


def recent_transactions(*, kinds: tuple[str, ...], limit: int = 20):
    return (LedgerTransaction.objects.filter(kind__in=kinds).prefetch_related("entries__account")
            .order_by("-id")[:limit])
