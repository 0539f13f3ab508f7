"""What the periodic resume task repairs: every step of a validation is idempotent, so resuming
is running the step again."""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from apps.marketplace.models import Job

from .models import Validation
from .services import validation_attempt_failed, validator_pay, verdict_apply

RUNNER_GRACE_SECONDS = 30
BATCH = 200


def validations_resume(*, now=None) -> list:
    """Fail running validations whose runner must have died (past PEER_VERIFY_TIMEOUT and a
    grace), post missing pays and verdicts; the ids of pending validations to run again."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.PEER_VERIFY_TIMEOUT + RUNNER_GRACE_SECONDS)
    for validation in Validation.objects.filter(state=Validation.State.RUNNING, started_at__lt=cutoff)[:BATCH]:
        validation_attempt_failed(validation_id=validation.id, worker_id=validation.validator_id,
                                  why="its runner stopped before an answer")
    for validation in Validation.objects.select_related("job", "validator").filter(
            state=Validation.State.DONE, paid=False)[:BATCH]:
        validator_pay(validation=validation)
    for validation in Validation.objects.filter(
            state__in=[Validation.State.DONE, Validation.State.UNDECIDED],
            job__verification_status=Job.Verification.PENDING).order_by("-round")[:BATCH]:
        verdict_apply(validation_id=validation.id)  # a confirming validation it calls for is listed below
    return list(Validation.objects.filter(state=Validation.State.PENDING).order_by("created_at")
                .values_list("id", flat=True)[:BATCH])
