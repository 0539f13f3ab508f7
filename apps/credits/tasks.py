from celery import shared_task

from .deposits.services import deposits_scan


@shared_task
def deposits_scan_task():
    """Credit new finalized USDC deposits. Safe to run twice, and at once (one claim per signature)."""
    report = deposits_scan()
    return {"credited": len(report.credited), "rejected": len(report.rejected),
            "waiting": len(report.waiting), "errors": len(report.errors)}
