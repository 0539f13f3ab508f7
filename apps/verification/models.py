"""Re-executions of verified jobs (sampled or challenged) and open challenges.

A job's verification state lives on the job (`Job.verification_status`); each re-execution by a
validator is one Validation; a challenge is a user's claim, with a credits bond, that a job's
answer is wrong, decided by re-execution (docs/verification.md).
"""

import uuid

from django.conf import settings
from django.db import models


class Challenge(models.Model):
    class State(models.TextChoices):
        OPEN = "open"  # re-execution under way
        UPHELD = "upheld"  # the fault was proven: bond back, part of the slash to the challenger
        REJECTED = "rejected"  # the answer stood: the bond is forfeited to the treasury
        UNDECIDED = "undecided"  # no validator could decide it: the bond is returned

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey("marketplace.Job", on_delete=models.PROTECT, related_name="challenges")
    challenger = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="challenges")
    bond = models.BigIntegerField(help_text="micro-USDC held from the challenger's credits")
    state = models.CharField(max_length=10, choices=State.choices, default=State.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job"], condition=models.Q(state="open"),
                                               name="one_open_challenge_per_job")]

    @property
    def reference(self) -> str:
        return f"challenge:{self.id}"


class Validation(models.Model):
    class Reason(models.TextChoices):
        SAMPLED = "sampled"  # drawn at random after completion
        CHALLENGED = "challenged"  # a user's open challenge
        CONFIRMATION = "confirmation"  # a second validator, after a first mismatch

    class State(models.TextChoices):
        PENDING = "pending"  # waiting for a validator
        RUNNING = "running"  # assigned to `validator`
        DONE = "done"  # compared: see outcome
        UNDECIDED = "undecided"  # no validator answered in PEER_VERIFY_MAX_ATTEMPTS tries

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey("marketplace.Job", on_delete=models.PROTECT, related_name="validations")
    reason = models.CharField(max_length=12, choices=Reason.choices)
    round = models.PositiveSmallIntegerField(default=1)
    challenge = models.ForeignKey(Challenge, null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="validations")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    validator = models.ForeignKey("workers.Worker", null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="validations")
    validators_tried = models.JSONField(default=list, help_text="worker ids that were assigned it and did not answer")
    outcome = models.CharField(max_length=12, blank=True, help_text="match, plausible, inconclusive or mismatch")
    detail = models.CharField(max_length=300, blank=True)
    mean_logprob = models.FloatField(null=True, blank=True)
    lowest_logprob = models.FloatField(null=True, blank=True)
    end_logprob = models.FloatField(null=True, blank=True)
    lowest_similarity = models.FloatField(null=True, blank=True,
                                          help_text="embedding jobs: the least cosine similarity of a vector")
    validator_output_sha256 = models.CharField(max_length=64, blank=True)
    paid = models.BooleanField(default=False, help_text="the validator's pay was posted")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "created_at"])]

    @property
    def reference(self) -> str:
        return f"validation:{self.id}"
