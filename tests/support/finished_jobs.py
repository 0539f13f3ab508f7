"""Jobs that already ran, written straight to the database with the ledger movements the relay
would have made (hold, then capture with the 70/24/6 split or a full refund): for tests of what
pages and figures read, without a worker running the model."""

from django.db import transaction
from django.utils import timezone

from apps.credits.pricing import MICRO_PER_CREDIT
from apps.credits.services import credits_grant, credits_hold_in_atomic, credits_settle_in_atomic
from apps.marketplace.models import Job


def finished_job(*, user, worker, charge: int = 50_000, completion_tokens: int = 30, finished_at=None,
                 failed: bool = False, tier: str = "open") -> Job:
    """A job `worker` finished at `finished_at` (now by default): completed and charged `charge`
    micro-USDC, or failed and refunded. Grants `user` the credits it holds."""
    hold = max(100_000, -(-charge // MICRO_PER_CREDIT) * MICRO_PER_CREDIT)
    credits_grant(user=user, credits=hold // MICRO_PER_CREDIT)
    job = Job.objects.create(
        user=user, public_model="peer-mixtral", served_model="gemma-3-270m-q4_k_m", tier=tier, params={},
        seed=1, prompt_sha256="0" * 64, prompt_tokens=12, worker=worker, hold_amount=hold,
        completion_tokens=None if failed else completion_tokens,
        charged_amount=0 if failed else charge,
        status=Job.Status.FAILED if failed else Job.Status.COMPLETED,
        hold_state=Job.HoldState.RELEASED if failed else Job.HoldState.CAPTURED,
        finished_at=finished_at or timezone.now(), deadline_at=timezone.now())
    with transaction.atomic():
        credits_hold_in_atomic(user=user, amount=hold, reference=job.reference)
        credits_settle_in_atomic(user=user, held_amount=hold, charge=0 if failed else charge, worker=worker,
                                 reference=job.reference)
    return job
