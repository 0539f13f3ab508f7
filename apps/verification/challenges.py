"""Open challenges: anyone with an account may dispute a verified job's answer within
PEER_CHALLENGE_WINDOW_SECONDS of its completion by holding PEER_CHALLENGE_BOND of their credits;
re-execution decides (services.py). Upheld: the bond comes back and the slash pays the
challenger its share; rejected: the bond goes to the treasury, which pays validators; undecided
(no validator could re-execute it): the bond comes back.
"""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.credits.ledger import InsufficientFunds
from apps.credits.services import credits_hold_in_atomic, credits_hold_release_in_atomic
from apps.marketplace.models import Job
from apps.marketplace.network import network_event_publish

from .models import Challenge, Validation


class ChallengeRefused(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def challenge_open(*, user, job_id, now=None) -> tuple[Challenge, Validation]:
    """Hold the challenge bond and put the job in line for re-execution. Raises ChallengeRefused."""
    now = now or timezone.now()
    with transaction.atomic(durable=True):
        job = Job.objects.select_for_update(of=("self",)).select_related("worker").filter(id=job_id).first()
        if job is None:
            raise ChallengeRefused(404, "job_not_found", f"No job {job_id} on this node.")
        if job.tier != "verified" or job.status != Job.Status.COMPLETED or not job.verification_status:
            raise ChallengeRefused(409, "not_challengeable", "Only a completed, signed verified-tier answer "
                                   "can be challenged.")
        if job.verification_status == Job.Verification.FAILED:
            raise ChallengeRefused(409, "already_proven", "This answer was already proven wrong and its worker "
                                   "slashed.")
        closes = job.finished_at + timedelta(seconds=settings.PEER_CHALLENGE_WINDOW_SECONDS)
        if now > closes:
            raise ChallengeRefused(409, "challenge_window_closed", f"The challenge window of this job closed at "
                                   f"{closes.isoformat()}.")
        if job.worker.operator_id == user.pk:
            raise ChallengeRefused(403, "own_worker", "An operator cannot challenge its own worker's answer.")
        if Challenge.objects.filter(job=job, state=Challenge.State.OPEN).exists():
            raise ChallengeRefused(409, "challenge_pending", "A challenge of this job is being decided; see "
                                   "its proof for the outcome.")
        challenge = Challenge.objects.create(job=job, challenger=user, bond=settings.PEER_CHALLENGE_BOND)
        try:
            with transaction.atomic():
                credits_hold_in_atomic(user=user, amount=challenge.bond, reference=challenge.reference)
        except InsufficientFunds:
            raise ChallengeRefused(402, "insufficient_credits", f"A challenge holds {challenge.bond} micro-USDC "
                                   "of your credits as its bond; you have less.") from None
        validation = Validation.objects.create(job=job, reason=Validation.Reason.CHALLENGED, challenge=challenge)
        if job.verification_status != Job.Verification.PENDING:
            Job.objects.filter(id=job.id).update(verification_status=Job.Verification.PENDING)
        network_event_publish("challenge.opened", challenge_id=str(challenge.id), job_id=str(job.id),
                              worker_id=str(job.worker_id))
    return challenge, validation


def challenge_settle_in_atomic(*, challenge_id, state: str) -> bool:
    """Decide an open challenge and end its bond's hold (forfeited when rejected). False when it
    was decided before. Caller holds an atomic block."""
    challenge = Challenge.objects.select_for_update().select_related("challenger").get(id=challenge_id)
    if challenge.state != Challenge.State.OPEN:
        return False
    credits_hold_release_in_atomic(user=challenge.challenger, amount=challenge.bond, reference=challenge.reference,
                                   forfeit=state == Challenge.State.REJECTED)
    challenge.state, challenge.decided_at = state, timezone.now()
    challenge.save(update_fields=["state", "decided_at"])
    network_event_publish("challenge.decided", challenge_id=str(challenge.id), job_id=str(challenge.job_id),
                          state=state)
    return True
