import uuid

from django.conf import settings
from django.db import models

TIERS = ("open", "verified", "confidential")


class Worker(models.Model):
    """A machine an operator registered. Its agent connects with the worker token."""

    class Status(models.TextChoices):
        OFFLINE = "offline"
        IDLE = "idle"
        BUSY = "busy"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    operator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="workers")
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    token_prefix = models.CharField(max_length=16)
    tiers = models.JSONField(default=list, help_text="Tiers this worker may serve.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OFFLINE)
    channel_name = models.CharField(max_length=200, blank=True)
    current_job_id = models.UUIDField(null=True, blank=True)
    models_served = models.JSONField(default=list, help_text="From the agent's hello: id, digest, backend.")
    hardware = models.JSONField(default=dict, blank=True)
    agent_version = models.CharField(max_length=40, blank=True)
    connected_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    last_job_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    payout_address = models.CharField(max_length=64, blank=True,
                                      help_text="Solana wallet that receives this worker's USDC earnings.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"


class CatalogueModel(models.Model):
    """A public model name and the served model behind it, so nobody is misled about what ran."""

    name = models.CharField(max_length=100, unique=True, help_text="Public name, e.g. peer-mixtral.")
    served_model = models.CharField(max_length=200, help_text="Model id an agent reports, e.g. gemma-3-270m-q4_k_m.")
    digests = models.JSONField(default=list, help_text="Accepted sha256 digests of the weights.")
    description = models.CharField(max_length=300, blank=True)
    context_length = models.PositiveIntegerField(default=2048)
    tokenizer_path = models.CharField(max_length=500, blank=True,
                                      help_text="A local GGUF with this model's vocabulary, for counting tokens.")
    active = models.BooleanField(default=True)

    def __str__(self) -> str:
        return f"{self.name} -> {self.served_model}"

    def is_served_by(self, model: dict) -> bool:
        return model.get("id") == self.served_model and model.get("digest") in self.digests


class WorkerPayout(models.Model):
    """One SPL USDC transfer of a worker's earnings, from the node's hot wallet.

    pending -> sent (signature and raw transaction recorded *before* sending, so a crash between
    send and record can never pay twice) -> paid (finalized on chain) | failed (reversed).
    """

    class State(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        PAID = "paid"
        FAILED = "failed"

    worker = models.ForeignKey(Worker, on_delete=models.PROTECT, related_name="payouts")
    address = models.CharField(max_length=64)
    amount = models.BigIntegerField(help_text="micro-USDC")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    signature = models.CharField(max_length=100, blank=True)
    raw_transaction = models.TextField(blank=True, help_text="base64 of the signed transaction last sent")
    last_valid_block_height = models.BigIntegerField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    claimed_until = models.DateTimeField(null=True, blank=True,
                                         help_text="A task working on this payout holds it until then.")
    error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["state"])]
        constraints = [models.CheckConstraint(condition=models.Q(amount__gt=0), name="payout_amount_positive")]
