from celery import shared_task

from .services import jobs_reap_stale


@shared_task
def jobs_reap_stale_task() -> int:
    """Refund jobs whose relay died before settling. Safe to run twice (each settle is claimed)."""
    return jobs_reap_stale()
