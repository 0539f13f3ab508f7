"""$PEER staking records. Balances themselves live in the ledger (apps.credits); these rows say
why they moved: unstake/unbond requests with their cooldown, slashes, closed epochs.

Amounts are integers: PEER base units (9 decimals) unless the field says micro-USDC.
"""

from django.conf import settings
from django.db import models


class UnstakeRequest(models.Model):
    """$PEER leaving a stake (or a worker's bond) that may be claimed after `available_at`.

    source=stake: user:<id>:staked:PEER -> user:<id>:unstaking:PEER now, -> user:<id>:PEER at claim.
    source=bond: worker:<uuid>:bond:PEER -> worker:<uuid>:unbonding:PEER now, -> the operator's
    liquid PEER at claim; until then a slash of the worker may still take it (`slashed`).
    """

    class Source(models.TextChoices):
        STAKE = "stake"
        BOND = "bond"

    class State(models.TextChoices):
        PENDING = "pending"
        CLAIMED = "claimed"
        SLASHED = "slashed", "Slashed away entirely"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="unstake_requests")
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.STAKE)
    worker = models.ForeignKey("workers.Worker", null=True, blank=True, on_delete=models.PROTECT,
                               related_name="bond_releases")
    amount = models.BigIntegerField()
    slashed = models.BigIntegerField(default=0, help_text="Taken by slashes during the cooldown (bonds only).")
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    requested_at = models.DateTimeField()
    available_at = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    request_transaction = models.OneToOneField("credits.LedgerTransaction", on_delete=models.PROTECT,
                                               related_name="unstake_request")
    claim_transaction = models.OneToOneField("credits.LedgerTransaction", null=True, blank=True,
                                             on_delete=models.PROTECT, related_name="unstake_claim")

    class Meta:
        indexes = [models.Index(fields=["user", "-id"]), models.Index(fields=["worker", "state"])]
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="unstake_amount_positive"),
            models.CheckConstraint(condition=models.Q(slashed__gte=0) & models.Q(slashed__lte=models.F("amount")),
                                   name="unstake_slashed_within_amount"),
            models.CheckConstraint(condition=models.Q(source="stake", worker__isnull=True)
                                   | models.Q(source="bond", worker__isnull=False),
                                   name="unstake_bond_has_worker"),
        ]

    @property
    def payable(self) -> int:
        return self.amount - self.slashed

    def __str__(self) -> str:
        return f"unstake #{self.id} {self.source} {self.amount} {self.state}"


class Slash(models.Model):
    """One proven fault of a worker, paid out of its bond exactly once (unique idempotency key)."""

    worker = models.ForeignKey("workers.Worker", on_delete=models.PROTECT, related_name="slashes")
    challenger = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="slash_rewards")
    amount = models.BigIntegerField()
    to_challenger = models.BigIntegerField()
    burned = models.BigIntegerField()
    from_bond = models.BigIntegerField(help_text="Taken from the locked bond.")
    from_unbonding = models.BigIntegerField(help_text="Taken from bond releases still in their cooldown.")
    reason = models.CharField(max_length=200)
    idempotency_key = models.CharField(max_length=200, unique=True)
    transaction = models.OneToOneField("credits.LedgerTransaction", on_delete=models.PROTECT, related_name="slash")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "slashes"
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="slash_amount_positive"),
            models.CheckConstraint(condition=models.Q(amount=models.F("to_challenger") + models.F("burned")),
                                   name="slash_split_adds_up"),
            models.CheckConstraint(condition=models.Q(amount=models.F("from_bond") + models.F("from_unbonding")),
                                   name="slash_sources_add_up"),
        ]

    def __str__(self) -> str:
        return f"slash #{self.id} {self.worker_id} {self.amount}"


class Epoch(models.Model):
    """A closed distribution period: the stakers' pool (micro-USDC) paid pro rata to stake.

    Epoch `number` spans [number * PEER_EPOCH_SECONDS, (number + 1) * PEER_EPOCH_SECONDS) since
    the Unix epoch; the row is inserted first, so a second close of the same epoch is a no-op.
    """

    number = models.BigIntegerField(unique=True)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField()
    pool_amount = models.BigIntegerField(default=0, help_text="micro-USDC in the stakers' pool at close")
    distributed = models.BigIntegerField(default=0, help_text="micro-USDC paid to stakers")
    remainder = models.BigIntegerField(default=0, help_text="micro-USDC left in the pool for the next epoch")
    total_staked = models.BigIntegerField(default=0, help_text="PEER base units staked at close")
    stakers = models.PositiveIntegerField(default=0)
    transaction = models.OneToOneField("credits.LedgerTransaction", null=True, blank=True,
                                       on_delete=models.PROTECT, related_name="epoch")
    closed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(pool_amount=models.F("distributed") + models.F("remainder")),
                                   name="epoch_pool_adds_up"),
        ]

    def __str__(self) -> str:
        return f"epoch {self.number}"
