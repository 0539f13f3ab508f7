from django.db.models import Sum

from .models import LedgerAccount, LedgerEntry, LedgerTransaction


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
    its entries; no non-issuer account is negative.
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
    return problems
