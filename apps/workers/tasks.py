from celery import shared_task
from django.conf import settings

from apps.marketplace.services import job_fail

from .services import job_relay_tell_worker_lost, workers_reap_silent


@shared_task
def workers_reap_silent_task():
    """Offline silent workers and fail (refund) the jobs they held. Safe to run twice."""
    for worker_id, job_id in workers_reap_silent(silence_seconds=settings.PEER_WORKER_SILENCE_LIMIT):
        job_fail(job_id=job_id, code="worker_lost", message="The worker stopped answering.")
        job_relay_tell_worker_lost(worker_id=worker_id, job_id=job_id)


@shared_task
def payouts_run_task() -> dict:
    """Open and advance worker payouts. Off (and says so) until the node has a hot wallet."""
    if not settings.PEER_PAYOUT_KEYPAIR:
        return {"skipped": "PEER_PAYOUT_KEYPAIR is not set"}
    from .payouts import payouts_run
    from .solana_payouts import PayoutChain

    return payouts_run(chain=PayoutChain.from_settings())
