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
    # Reputation (0..1) from outcomes, decaying toward 0.5 when idle: see apps/workers/metrics.py.
    reputation = models.FloatField(default=0.5)
    reputation_updated_at = models.DateTimeField(null=True, blank=True)
    jobs_completed = models.PositiveIntegerField(default=0)
    jobs_failed = models.PositiveIntegerField(default=0)
    payout_address = models.CharField(max_length=64, blank=True,
                                      help_text="Solana wallet that receives this worker's USDC earnings.")
    # Set by the operator (the agent's own `hardware` report above is overwritten on each hello).
    hardware_description = models.CharField(max_length=300, blank=True)
    # The agent's Ed25519 public key (raw, base64) from its latest hello: it signs every job's
    # commitment (worker/commitment.py). Required for the verified tier.
    signing_key = models.CharField(max_length=64, blank=True)
    # The confidential tier (apps/verification/attestation.py): the enclave's HPKE key and what
    # the node last verified of its evidence; routed to only while attested_until is ahead.
    enclave_key = models.CharField(max_length=64, blank=True, db_index=True)
    attestation = models.JSONField(default=dict, blank=True, help_text=(
        "The node's last verdict on the enclave's evidence: kind, keys, code measurement, nonce, "
        "problems, and the evidence per model digest."))
    attested_until = models.DateTimeField(null=True, blank=True)
    offers = models.JSONField(default=dict, blank=True, help_text=(
        'The operator\'s asking prices: {"<public model name>": {"price_per_token": <micro-USDC>}}; '
        "a model not listed is served at the node's default price."))
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"


class WorkerModelStats(models.Model):
    """Speed the node measured while relaying a worker's jobs for one model (EWMA)."""

    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="model_stats")
    model_id = models.CharField(max_length=200)
    ttft_ms = models.FloatField(null=True, blank=True, help_text="time to first token, EWMA")
    tokens_per_second = models.FloatField(null=True, blank=True, help_text="after the first token, EWMA")
    samples = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["worker", "model_id"], name="one_stats_row_per_worker_model")]


class CatalogueModel(models.Model):
    """A public model name and the served model behind it, so nobody is misled about what ran."""

    class Kind(models.TextChoices):
        CHAT = "chat"  # /v1/chat/completions and /v1/completions
        EMBEDDING = "embedding"  # /v1/embeddings

    name = models.CharField(max_length=100, unique=True, help_text="Public name, e.g. peer-mixtral.")
    served_model = models.CharField(max_length=200, help_text="Model id an agent reports, e.g. gemma-3-270m-q4_k_m.")
    digests = models.JSONField(default=list, help_text="Accepted sha256 digests of the weights.")
    description = models.CharField(max_length=300, blank=True)
    context_length = models.PositiveIntegerField(default=2048)
    tokenizer_path = models.CharField(max_length=500, blank=True, help_text=(
        "For counting tokens: a local GGUF with a chat model's vocabulary, or an embedding model's "
        "tokenizer.json (Hugging Face tokenizers)."))
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.CHAT,
                            help_text="Which endpoints serve it; agents announce the same kind per model.")
    dimensions = models.PositiveIntegerField(null=True, blank=True,
                                             help_text="Embedding models: the length of each vector.")
    attestation_policy = models.JSONField(default=dict, blank=True, help_text=(
        'Confidential tier, this model only: {"code_measurements": [...], "snp_measurements": [...], '
        '"tdx_mrtds": [...]}; a list given here replaces the node-wide setting for this model.'))
    active = models.BooleanField(default=True)

    def __str__(self) -> str:
        return f"{self.name} -> {self.served_model}"

    def is_served_by(self, model: dict) -> bool:
        # An agent's model without a kind is a chat model (agents from before embeddings).
        return (model.get("id") == self.served_model and model.get("digest") in self.digests
                and model.get("kind", self.Kind.CHAT) == self.kind)


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
