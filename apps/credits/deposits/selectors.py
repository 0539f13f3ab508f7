"""Reads for USDC deposits: what the scanner watches, what a buyer may see of their purchase."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Sum

from ..ledger import EXTERNAL_USDC_CODE
from ..models import Deposit, DepositReference, DepositStatus


class DepositReferenceNotFound(Exception):
    """No such reference, or not the caller's (the two read the same, so keys cannot be probed)."""


def deposit_references_watched(*, now: datetime):
    """References whose transfers the scanner still looks for: unexpired ones, and expired ones for
    PEER_DEPOSIT_WATCH_SECONDS more, so a payment sent late is still credited (the money arrived)."""
    grace = getattr(settings, "PEER_DEPOSIT_WATCH_SECONDS", 86_400)
    return DepositReference.objects.filter(expires_at__gte=now - timedelta(seconds=grace)).order_by("id")


def deposit_reference_access(*, user, key: str) -> DepositReference:
    reference = DepositReference.objects.filter(key=key, user=user).first()
    if reference is None:
        raise DepositReferenceNotFound(key)
    return reference


@dataclass(frozen=True)
class PurchaseState:
    status: str                 # pending | credited | rejected | expired
    credited_micro_usdc: int
    deposits: list[Deposit]     # oldest first
    reason: str                 # the latest rejection's reason while nothing is credited

    @property
    def credited(self) -> list[Deposit]:
        return [d for d in self.deposits if d.status == DepositStatus.CREDITED]


def deposit_reference_state(*, reference: DepositReference, now: datetime) -> PurchaseState:
    """credited once any transfer under the reference is; rejected when only refused ones were
    seen (a correct payment afterwards still turns it credited); otherwise pending until it
    expires, then expired (a late payment is still credited while it is watched)."""
    deposits = list(reference.deposits.select_related("ledger_transaction").order_by("id"))
    credited = sum(d.micro_usdc for d in deposits if d.status == DepositStatus.CREDITED)
    if credited:
        status, reason = "credited", ""
    elif deposits:
        status, reason = "rejected", deposits[-1].reason
    else:
        status, reason = ("expired" if now > reference.expires_at else "pending"), ""
    return PurchaseState(status=status, credited_micro_usdc=credited, deposits=deposits, reason=reason)


def deposit_invariant_violations() -> list[str]:
    """Each credited deposit is one `deposit` ledger transaction moving exactly its amount from
    external:solana:USDC to its buyer; a rejected one moved nothing."""
    problems = []
    for deposit in Deposit.objects.select_related("reference", "ledger_transaction"):
        txn = deposit.ledger_transaction
        if deposit.status == DepositStatus.REJECTED:
            if txn is not None or deposit.micro_usdc:
                problems.append(f"rejected deposit {deposit.signature} moved money")
            continue
        if txn is None or txn.kind != "deposit" or txn.idempotency_key != f"deposit:{deposit.signature}":
            problems.append(f"credited deposit {deposit.signature} has no deposit ledger transaction")
            continue
        legs = {(e.account.code, e.amount) for e in txn.entries.select_related("account")}
        wanted = {(EXTERNAL_USDC_CODE, -deposit.micro_usdc),
                  (f"user:{deposit.reference.user_id}:USDC", deposit.micro_usdc)}
        if legs != wanted:
            problems.append(f"credited deposit {deposit.signature} posted {sorted(legs)}, not {sorted(wanted)}")
    return problems


def deposits_credited_total() -> int:
    return Deposit.objects.filter(status=DepositStatus.CREDITED).aggregate(total=Sum("micro_usdc"))["total"] or 0
