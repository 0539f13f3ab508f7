from django.db.models import Q, Sum

from .models import AccountKind, Asset, LedgerAccount, LedgerEntry, LedgerTransaction


def balance_get(*, user) -> int:
    """The user's spendable credits in micro-USDC (0 before their first movement)."""
    account = LedgerAccount.objects.filter(code=f"user:{user.pk}:USDC").only("balance").first()
    return account.balance if account else 0


def held_get(*, user) -> int:
    account = LedgerAccount.objects.filter(code=f"user:{user.pk}:held:USDC").only("balance").first()
    return account.balance if account else 0


def entries_for_user(*, user, limit: int = 50):
    return (LedgerEntry.objects.filter(account__user=user, account__kind="user")
            .select_related("transaction").order_by("-id")[:limit])


def transactions_for_reference(*, reference: str):
    return LedgerTransaction.objects.filter(reference=reference).prefetch_related("entries__account").order_by("id")


def ledger_invariant_violations() -> list[str]:
    """Every way the ledger could be wrong, as sentences; empty when it is sound.

    Checks: each transaction sums to zero per asset; each account's balance equals the sum of
    its entries; no non-issuer account is negative; each job's hold was placed at most once and
    settled (captured or released) at most once, never before it was placed, and what the held
    accounts hold equals the holds not yet settled; $PEER in circulation = minted - burned; each
    credited deposit is exactly one matching ledger transaction, a rejected one moved nothing.
    """
    problems = []
    unbalanced = (LedgerEntry.objects.values("transaction_id", "asset").annotate(total=Sum("amount"))
                  .exclude(total=0))
    problems += [f"transaction {row['transaction_id']} sums to {row['total']} {row['asset']}" for row in unbalanced]
    sums = dict(LedgerEntry.objects.values_list("account_id").annotate(total=Sum("amount")))
    for account in LedgerAccount.objects.all():
        if account.balance != sums.get(account.id, 0):
            problems.append(f"{account.code} balance {account.balance} != entries {sums.get(account.id, 0)}")
        if account.balance < 0 and not account.allow_negative:
            problems.append(f"{account.code} is negative")
    problems += _hold_violations()
    problems += _peer_supply_violations()
    from .deposits.selectors import deposit_invariant_violations  # deposits import this module

    problems += deposit_invariant_violations()
    return problems


HOLD_ENDINGS = ("capture", "refund", "hold_forfeit")


def _hold_violations() -> list[str]:
    problems = []
    kinds_by_job: dict[str, list[str]] = {}
    # Holds are a job's price or a challenge's bond (apps/verification/challenges.py).
    for reference, kind in (LedgerTransaction.objects.filter(Q(reference__startswith="job:") |
                                                            Q(reference__startswith="challenge:"))
                            .order_by("id").values_list("reference", "kind")):
        kinds_by_job.setdefault(reference, []).append(kind)
    open_holds = 0
    for reference, kinds in kinds_by_job.items():
        holds = kinds.count("hold")
        settles = sum(kinds.count(kind) for kind in HOLD_ENDINGS)
        if holds > 1 or settles > 1:
            problems.append(f"{reference} was held {holds} times and settled {settles} times")
        elif settles and (not holds or kinds.index("hold") > max(
                i for i, k in enumerate(kinds) if k in HOLD_ENDINGS)):
            problems.append(f"{reference} was settled without a hold before it")
        elif holds and not settles:
            open_holds += next(e.amount for e in LedgerEntry.objects.filter(
                transaction__reference=reference, transaction__kind="hold", amount__gt=0))
    held = LedgerAccount.objects.filter(kind=AccountKind.HELD).aggregate(total=Sum("balance"))["total"] or 0
    if held != open_holds:
        problems.append(f"held accounts hold {held} but open holds total {open_holds}")
    return problems


def _peer_supply_violations() -> list[str]:
    peer = LedgerAccount.objects.filter(asset=Asset.PEER)
    minted = -(peer.filter(kind=AccountKind.PEER_ISSUER).aggregate(total=Sum("balance"))["total"] or 0)
    burned = peer.filter(kind=AccountKind.BURNED).aggregate(total=Sum("balance"))["total"] or 0
    circulating = (peer.exclude(kind__in=[AccountKind.PEER_ISSUER, AccountKind.BURNED])
                   .aggregate(total=Sum("balance"))["total"] or 0)
    if circulating != minted - burned:
        return [f"$PEER in circulation {circulating} != minted {minted} - burned {burned}"]
    return []
