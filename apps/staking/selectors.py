"""$PEER staking reads. The stakers' pool accrues 80% of every job's margin (apps.credits);
stakes, bonds, epochs and slashing arrive with the money issue."""

from apps.credits.models import LedgerAccount
from apps.credits.services import STAKERS_POOL_CODE, TREASURY_CODE


def stakers_pool_balance() -> int:
    account = LedgerAccount.objects.filter(code=STAKERS_POOL_CODE).only("balance").first()
    return account.balance if account else 0


def treasury_balance() -> int:
    account = LedgerAccount.objects.filter(code=TREASURY_CODE).only("balance").first()
    return account.balance if account else 0
