import logging

from celery import shared_task
from django.conf import settings

from apps.marketplace.services import job_fail

from .services import workers_reap_silent

logger = logging.getLogger(__name__)


@shared_task
def workers_reap_silent_task():
    """Offline silent workers and fail (refund) the jobs they held. Safe to run twice."""
    for worker_id, job_id in workers_reap_silent(silence_seconds=settings.PEER_WORKER_SILENCE_LIMIT):
        job_fail(job_id=job_id, code="worker_lost", message="The worker stopped answering.")
        _tell_relay(worker_id=worker_id, job_id=job_id)


def _tell_relay(*, worker_id, job_id) -> None:
    """The relay waiting on the job may be in another node process: tell it over the channel
    layer that its worker is gone, so its client gets an answer now instead of at the job's
    timeout. Best effort: without the layer the relay still ends at its own deadline."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    message = "The worker stopped answering; the whole price was refunded."
    try:
        async_to_sync(get_channel_layer().group_send)(f"job.{job_id}", {
            "type": "job.frame", "worker_id": str(worker_id),
            "frame": {"type": "job.error", "job_id": str(job_id), "code": "worker_lost", "message": message}})
    except Exception:  # noqa: BLE001 - any layer failure: the refund above already stands
        logger.warning("could not tell job %s's relay that worker %s is lost", job_id, worker_id)



@shared_task
def payouts_run_task() -> dict:
    """Open and advance worker payouts. Off (and says so) until the node has a hot wallet."""
    if not settings.PEER_PAYOUT_KEYPAIR:
        return {"skipped": "PEER_PAYOUT_KEYPAIR is not set"}
    from .payouts import payouts_run
    from .solana_payouts import PayoutChain

    return payouts_run(chain=PayoutChain.from_settings())
