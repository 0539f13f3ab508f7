"""Verification reads: who may validate a job, and what a job's proof says about its checks."""

import secrets

from django.conf import settings
from django.utils import timezone

from apps.marketplace.models import Job
from apps.staking.codes import bond_code, unbonding_code
from apps.credits.models import LedgerAccount
from apps.workers.metrics import decayed
from apps.workers.models import Worker

from .models import Challenge, Validation


def validator_candidates(*, job: Job, exclude_operator_ids: set, exclude_worker_ids: set) -> list[tuple]:
    """Idle workers that may re-execute `job`: of another operator than the job's worker (and
    than `exclude_operator_ids`), serving the very model digest the job ran with, with a backend
    that can score answers (`validates` in their hello), and with a reputation at the verified
    tier's floor or above (a worker proven to cheat, or failing, does not vouch for others).
    (worker id, model entry) pairs in a random order, so that no one can predict, or arrange,
    who checks whom."""
    excluded_operators = {str(o) for o in exclude_operator_ids} | {str(job.worker.operator_id)}
    excluded_workers = {str(w) for w in exclude_worker_ids} | {str(job.worker_id)}
    found, now = [], timezone.now()
    for worker in Worker.objects.filter(status=Worker.Status.IDLE, revoked_at__isnull=True).only(
            "id", "operator_id", "models_served", "reputation", "reputation_updated_at"):
        if str(worker.operator_id) in excluded_operators or str(worker.id) in excluded_workers:
            continue
        if decayed(worker.reputation, worker.reputation_updated_at, now) < settings.PEER_VERIFIED_REPUTATION_FLOOR:
            continue
        model = next((m for m in worker.models_served
                      if m.get("digest") == job.model_digest and m.get("validates") is True), None)
        if model is not None:
            found.append((worker.id, model))
    secrets.SystemRandom().shuffle(found)
    return found


def bond_slashable(*, worker_id) -> int:
    """PEER a slash can take from the worker: its locked bond plus releases still in cooldown."""
    return sum(LedgerAccount.objects.filter(code__in=[bond_code(worker_id), unbonding_code(worker_id)])
               .values_list("balance", flat=True))


def validations_for_job(*, job_id) -> list[Validation]:
    return list(Validation.objects.filter(job_id=job_id).order_by("created_at"))


def challenges_for_job(*, job_id) -> list[Challenge]:
    return list(Challenge.objects.filter(job_id=job_id).order_by("created_at"))


def challenge_of_user(*, challenge_id, user) -> Challenge | None:
    """The challenge if `user` opened it: another user's is as good as missing."""
    return Challenge.objects.filter(id=challenge_id, challenger=user).first()
