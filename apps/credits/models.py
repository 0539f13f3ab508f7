"""The double-entry ledger: accounts with cached balances, append-only transactions and entries.

Amounts are integers in the asset's smallest unit (micro-USDC for USDC; base units for PEER).
Every transaction's entries sum to zero per asset; balances are changed only by
`services.ledger_post`, in the same database transaction as the entries, under row locks.
"""

from django.conf import settings
from django.db import models


class Asset(models.TextChoices):
    USDC = "USDC", "USDC (micro units)"
    PEER = "PEER", "$PEER (base units)"


class AccountKind(models.TextChoices):
    USER = "user", "User credits"
    HELD = "held", "User credits on hold for running jobs"
    WORKER = "worker", "Worker earnings"
    STAKERS_POOL = "stakers_pool", "Stakers' pool"
    TREASURY = "treasury", "Treasury"
    PROMO = "promo", "Treasury promotional grants (issuer)"
    EXTERNAL = "external", "USDC outside the ledger, on chain (issuer)"
    PAYOUT_PENDING = "payout_pending", "Worker payouts sent, awaiting confirmation"
    PEER_ISSUER = "peer_issuer", "$PEER supply (issuer)"
    BURNED = "burned", "$PEER burned"
    STAKED = "staked", "$PEER staked"
    UNSTAKING = "unstaking", "$PEER in unstaking cooldown"
    BOND = "bond", "$PEER locked as a worker's bond"


class LedgerAccount(models.Model):
    code = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=AccountKind.choices)
    asset = models.CharField(max_length=8, choices=Asset.choices, default=Asset.USDC)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                             on_delete=models.PROTECT, related_name="ledger_accounts")
    balance = models.BigIntegerField(default=0)
    # Only issuer accounts (promo, external) may go below zero: they are where value enters.
    allow_negative = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(allow_negative=True) | models.Q(balance__gte=0),
                                   name="ledger_account_non_negative_unless_issuer"),
        ]

    def __str__(self) -> str:
        return f"{self.code} ({self.asset})"


class LedgerTransaction(models.Model):
    kind = models.CharField(max_length=30)
    idempotency_key = models.CharField(max_length=200, unique=True, null=True, blank=True)
    reference = models.CharField(max_length=100, blank=True, db_index=True,
                                 help_text="What caused it, e.g. job:<uuid>.")
    memo = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"#{self.id} {self.kind} {self.reference}"


class LedgerEntry(models.Model):
    transaction = models.ForeignKey(LedgerTransaction, on_delete=models.PROTECT, related_name="entries")
    account = models.ForeignKey(LedgerAccount, on_delete=models.PROTECT, related_name="entries")
    asset = models.CharField(max_length=8, choices=Asset.choices)
    amount = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "ledger entries"
        indexes = [models.Index(fields=["account", "id"])]


class DepositReference(models.Model):
    """One purchase of credits with USDC: the Solana Pay reference key the buyer's transfer carries.

    The key is a fresh random public key (nobody holds its private key). Transfers are found with
    getSignaturesForAddress(key) and credited to `user`; see docs/payments.md.
    """

    key = models.CharField(max_length=44, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="deposit_references")
    micro_usdc = models.BigIntegerField(help_text="What was asked for; what arrives is what is credited.")
    memo = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(micro_usdc__gt=0),
                                              name="deposit_reference_amount_positive")]

    def __str__(self) -> str:
        return f"{self.key} ({self.micro_usdc} micro-USDC)"


class DepositStatus(models.TextChoices):
    CREDITED = "credited", "Credited"
    REJECTED = "rejected", "Rejected"


class Deposit(models.Model):
    """One transaction signature found under a reference: credited once, or rejected with a reason.

    The unique signature is what makes a deposit count once, whichever scan (or thread) sees it
    first; the ledger transaction's idempotency key `deposit:<signature>` says the same again.
    """

    signature = models.CharField(max_length=88, unique=True)
    reference = models.ForeignKey(DepositReference, on_delete=models.PROTECT, related_name="deposits")
    status = models.CharField(max_length=10, choices=DepositStatus.choices)
    micro_usdc = models.BigIntegerField(default=0, help_text="What arrived and was credited; 0 when rejected.")
    reason = models.CharField(max_length=300, blank=True,
                              help_text="Why it was rejected, or a note on a credited one (an amount mismatch).")
    payer = models.CharField(max_length=44, blank=True)
    memo = models.CharField(max_length=200, blank=True)
    slot = models.BigIntegerField(null=True, blank=True)
    ledger_transaction = models.OneToOneField(LedgerTransaction, null=True, blank=True, on_delete=models.PROTECT,
                                              related_name="deposit")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # A credited row gets its ledger transaction in the same database transaction that inserts
        # it (the insert comes first: it is the claim), so only the rejected side is checked here.
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(status=DepositStatus.CREDITED, micro_usdc__gt=0)
                           | models.Q(status=DepositStatus.REJECTED, micro_usdc=0, ledger_transaction__isnull=True)),
                name="deposit_credits_something_or_nothing"),
        ]

    def __str__(self) -> str:
        return f"{self.signature[:12]}… {self.status} {self.micro_usdc}"


class X402Payment(models.Model):
    """An x402 payment settled on chain and credited; one row per transaction signature, so a
    payment can never be credited twice."""

    signature = models.CharField(max_length=100, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="x402_payments")
    payer = models.CharField(max_length=64, help_text="The paying wallet, as the facilitator reported it.")
    amount = models.BigIntegerField(help_text="micro-USDC")
    ledger_transaction = models.OneToOneField(LedgerTransaction, on_delete=models.PROTECT)
    created_at = models.DateTimeField(auto_now_add=True)
