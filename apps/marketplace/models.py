import uuid

from django.conf import settings
from django.db import models

from worker.prompt import job_prompt


class Job(models.Model):
    """One inference request: its quote and hold, where it ran, and what it cost.

    Written at creation, at assignment and once at the end; never per token.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"

    class HoldState(models.TextChoices):
        HELD = "held"
        CAPTURED = "captured"
        RELEASED = "released"

    class Verification(models.TextChoices):
        NONE = "", "not applicable"  # open tier, embeddings, failed or cancelled jobs
        AWAITING = "awaiting"  # a completed, signed verified job the sampler has not drawn for yet
        NOT_SAMPLED = "not_sampled"
        PENDING = "pending"  # being re-executed (sampled or challenged)
        PASSED = "passed"
        FAILED = "failed"  # a proven fault: two validators' runs disagree with the answer
        UNDECIDED = "undecided"  # no validator could re-execute it

    class Kind(models.TextChoices):
        GENERATION = "generation"  # chat and raw completions: text out
        EMBEDDING = "embedding"  # /v1/embeddings: one vector per input

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="jobs")
    public_model = models.CharField(max_length=100)
    served_model = models.CharField(max_length=200)
    model_digest = models.CharField(max_length=100, blank=True)
    tier = models.CharField(max_length=20)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.GENERATION)
    stream = models.BooleanField(default=False)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    messages = models.JSONField(default=list, blank=True, help_text="chat jobs")
    raw_prompt = models.TextField(null=True, blank=True, help_text="completion jobs: run as given")
    inputs = models.JSONField(default=list, blank=True, help_text="embedding jobs: the texts, in order")
    # Confidential jobs: the request sealed to the enclave (enclave_key, reply_key, request); the
    # node never holds its plaintext, so `messages` stays empty (docs/confidential.md).
    sealed = models.JSONField(null=True, blank=True)
    params = models.JSONField(help_text="max_tokens, temperature, top_p, seed, stop")
    seed = models.BigIntegerField()
    prompt_sha256 = models.CharField(max_length=64)
    prompt_tokens = models.PositiveIntegerField()
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    worker = models.ForeignKey("workers.Worker", null=True, blank=True, on_delete=models.PROTECT,
                               related_name="jobs")
    hold_amount = models.BigIntegerField(help_text="micro-USDC held at the quote")
    price_ceiling = models.BigIntegerField(default=0, help_text="micro-USDC per token the hold covers")
    price_per_token = models.BigIntegerField(null=True, blank=True, help_text="the serving worker's offer")
    charged_amount = models.BigIntegerField(null=True, blank=True, help_text="micro-USDC captured")
    hold_state = models.CharField(max_length=10, choices=HoldState.choices, default=HoldState.HELD)
    output_text = models.TextField(blank=True)
    finish_reason = models.CharField(max_length=20, blank=True)
    commitment = models.JSONField(null=True, blank=True, help_text="inputs and hash")
    # The owner asked (peer_public_proof) that anyone with the job id may read its proof.
    proof_public = models.BooleanField(default=False)
    verification_status = models.CharField(max_length=12, choices=Verification.choices, blank=True, default="")
    error_code = models.CharField(max_length=50, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(help_text="After this the reaper refunds a job still open.")

    class Meta:
        indexes = [models.Index(fields=["hold_state", "deadline_at"]), models.Index(fields=["user", "-created_at"]),
                   # the network's figures: jobs finished in the last minute (network_stats.py)
                   models.Index(fields=["finished_at"], name="job_finished_at"),
                   # the sampler's work list: small, as it draws for every job it finds
                   models.Index(fields=["finished_at"], condition=models.Q(verification_status="awaiting"),
                                name="job_awaiting_sample"),
                   # the queue a request joins (selectors.jobs_waiting_count, at every creation):
                   # entries for queued jobs only, where (hold_state, deadline_at) keeps one for
                   # each version of every held job until a vacuum (4 ms a count at 19k jobs)
                   models.Index(fields=["public_model", "tier"], condition=models.Q(status="queued", hold_state="held"),
                                name="job_queue")]

    def __str__(self) -> str:
        return f"job {self.id} ({self.status})"

    @property
    def is_chat(self) -> bool:
        return self.raw_prompt is None

    def prompt_text(self) -> str:
        """What the worker runs (the commitment hashes exactly this)."""
        return job_prompt(messages=self.messages, prompt=self.raw_prompt)[0]

    @property
    def reference(self) -> str:
        return f"job:{self.id}"
