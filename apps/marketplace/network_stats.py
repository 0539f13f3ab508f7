"""The network's live figures (the landing page): workers online by tier, jobs and tokens over the
last minute, $PEER burned, the treasury.

How they stay live: a beat task (apps/credits/tasks.py, `network_stats_publish_task`, every 5 s in
CELERY_BEAT_SCHEDULE) reads one snapshot and publishes it as a "network.stats" event on the
public stream (/ws/network/, network.py); the landing page renders the same snapshot on load
and replaces its figures with each event's `text` (static/js/network_live.js).

Why a periodic snapshot rather than an event per job: "the last minute" slides, so the figures
change when nothing happens (a quiet minute must fall to 0), and a tick costs the same three
small queries whether one job finished or a thousand did, and whether one page watches or a
thousand do (one group_send fans out). Nothing is added to the relay's hot path. A lost tick
costs nothing: the next one carries the whole state. Figures are at most one tick old.
"""

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Q, Sum
from django.utils import timezone

from apps.credits.ledger import PEER_BURNED_CODE, STAKERS_POOL_CODE, TREASURY_CODE
from apps.credits.models import LedgerAccount
from apps.credits.units import peer_text, usdc_text
from apps.workers.models import TIERS, Worker

from .models import Job

WINDOW = timedelta(minutes=1)


@dataclass(frozen=True)
class NetworkStats:
    at: datetime
    workers_online: int
    workers_by_tier: dict[str, int]  # a worker registered for two tiers counts in both
    jobs_last_minute: int  # completed (finished) in the last minute
    tokens_per_second: float  # completion tokens of those jobs, per second of the minute
    peer_burned: int  # $PEER base units, ever
    treasury: int  # micro-USDC
    stakers_pool: int  # micro-USDC


def network_stats_get(*, now: datetime | None = None) -> NetworkStats:
    """The figures as of `now` (three queries; each is consistent, together they are close enough)."""
    now = now or timezone.now()
    online = Worker.objects.filter(status__in=(Worker.Status.IDLE, Worker.Status.BUSY))
    workers = online.aggregate(total=Count("id"), **{
        tier: Count("id", filter=Q(tiers__contains=[tier])) for tier in TIERS})
    # finished_at is when a job settled; a completed job always has one.
    jobs = Job.objects.filter(status=Job.Status.COMPLETED, finished_at__gt=now - WINDOW, finished_at__lte=now) \
        .aggregate(count=Count("id"), tokens=Sum("completion_tokens"))
    balances = dict(LedgerAccount.objects.filter(code__in=(PEER_BURNED_CODE, TREASURY_CODE, STAKERS_POOL_CODE))
                    .values_list("code", "balance"))
    return NetworkStats(
        at=now, workers_online=workers.pop("total"), workers_by_tier=workers,
        jobs_last_minute=jobs["count"],
        tokens_per_second=round((jobs["tokens"] or 0) / WINDOW.total_seconds(), 1),
        peer_burned=balances.get(PEER_BURNED_CODE, 0), treasury=balances.get(TREASURY_CODE, 0),
        stakers_pool=balances.get(STAKERS_POOL_CODE, 0))


def network_stats_text(stats: NetworkStats) -> dict[str, str]:
    """Each figure as the page shows it, keyed as the page's `data-stat` attributes: the server
    renders these on load and the page puts the event's copy in place, so both read the same."""
    text = {
        "workers_online": f"{stats.workers_online:,}",
        "jobs_last_minute": f"{stats.jobs_last_minute:,}",
        "tokens_per_second": f"{stats.tokens_per_second:,.1f}",
        "peer_burned": peer_text(stats.peer_burned),
        "treasury": usdc_text(stats.treasury),
        "stakers_pool": usdc_text(stats.stakers_pool),
    }
    text.update({f"workers_{tier}": f"{count:,}" for tier, count in stats.workers_by_tier.items()})
    return text


def network_stats_event(stats: NetworkStats) -> dict:
    """The "network.stats" event's fields: the figures as numbers, for any watcher, and as text."""
    figures = asdict(stats)
    figures.pop("at")  # the event has its own
    return {"stats": figures, "text": network_stats_text(stats)}
