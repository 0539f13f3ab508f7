from celery import shared_task

from apps.marketplace.network import network_event_publish
from apps.marketplace.network_stats import network_stats_event, network_stats_get

from .deposits.services import deposits_scan


@shared_task
def deposits_scan_task():
    """Credit new finalized USDC deposits. Safe to run twice, and at once (one claim per signature)."""
    report = deposits_scan()
    return {"credited": len(report.credited), "rejected": len(report.rejected),
            "waiting": len(report.waiting), "errors": len(report.errors)}


@shared_task
def network_stats_publish_task():
    """Publish the network's figures on /ws/network/ (apps/marketplace/network_stats.py says why a
    beat tick and not an event per job). Safe to run twice: each tick sends a whole snapshot."""
    network_event_publish("network.stats", **network_stats_event(network_stats_get()))
