from celery import shared_task
from django.utils import timezone

from .services import epoch_close


@shared_task
def epoch_close_task() -> int:
    """Close the last epoch that has ended and pay the stakers' pool. Safe to run twice: a
    closed epoch is a no-op. Beat runs it every PEER_EPOCH_SECONDS."""
    return epoch_close(now=timezone.now()).number
