"""The operator's charts (/operator/ and a worker's page): earnings and jobs per day over the last
30 UTC days, and each worker's reputation now. Chart and Series: apps/credits/charts.py.

Earnings are what reached the workers' USDC accounts for work: their 70% of each captured job
and validators' pay for re-executions. Payouts (money leaving to the chain) are not earnings.
"""

from datetime import date

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.utils import timezone

from apps.credits.charts import (BLUE, GREEN, PURPLE, RED, Chart, Series, day_axis, day_start, days_ending,
                                 per_day, sums_by_day)
from apps.credits.models import LedgerEntry
from apps.credits.units import USDC_DECIMALS, usdc_text
from apps.marketplace.models import Job

from .models import Worker
from .selectors import worker_reputation_now

EARNING_KINDS = ("capture", "validator_pay")


def earnings_chart(*, workers: list[Worker], today: date | None = None) -> Chart:
    days = days_ending(today or timezone.now().date())
    x, labels = day_axis(days)
    earned = per_day(days, sums_by_day(
        LedgerEntry.objects.filter(account__code__in=[f"worker:{w.pk}:USDC" for w in workers], amount__gt=0,
                                   transaction__kind__in=EARNING_KINDS, created_at__gte=day_start(days[0])),
        on="created_at", total=Sum("amount")))
    return Chart(
        key="earnings", title="Earnings per day", kind="bars", x=x, x_labels=labels,
        summary=f"Earned today: {usdc_text(earned[-1])}; in the last {len(days)} days: {usdc_text(sum(earned))}.",
        series=[Series("Earned", earned, USDC_DECIMALS, "USDC", GREEN)])


def jobs_chart(*, workers: list[Worker], today: date | None = None) -> Chart:
    """Jobs that finished on the workers each day (a job that failed over counts on its last worker)."""
    days = days_ending(today or timezone.now().date())
    x, labels = day_axis(days)
    finished = Job.objects.filter(worker__in=workers, finished_at__gte=day_start(days[0]))
    completed = per_day(days, sums_by_day(finished, on="finished_at",
                                          total=Count("id", filter=Q(status=Job.Status.COMPLETED))))
    failed = per_day(days, sums_by_day(finished, on="finished_at",
                                       total=Count("id", filter=Q(status=Job.Status.FAILED))))
    return Chart(
        key="jobs", title="Jobs per day", kind="bars", x=x, x_labels=labels,
        summary=f"Today: {completed[-1]:,} completed, {failed[-1]:,} failed; in the last {len(days)} days: "
                f"{sum(completed):,} completed, {sum(failed):,} failed.",
        series=[Series("Completed", completed, 0, "jobs", BLUE), Series("Failed", failed, 0, "jobs", RED)])


def reputation_chart(*, workers: list[Worker]) -> Chart:
    """Each worker's reputation as routing uses it now (no history is kept: each outcome moves it)."""
    floor = settings.PEER_VERIFIED_REPUTATION_FLOOR
    scores = [worker_reputation_now(worker=worker) for worker in workers]
    names = [worker.name for worker in workers]
    said = ", ".join(f"{name} {score:.2f}" if score is not None else f"{name} not measured yet"
                     for name, score in zip(names, scores)) or "No workers yet"
    return Chart(
        key="reputation", title="Reputation now (0 to 1)", kind="bars", categories=True, y_max=1.0,
        x=list(range(len(workers))), x_labels=names,
        summary=f"{said}. The verified tier routes only to workers at {floor:.2f} or above.",
        series=[Series("Reputation", scores, 0, "", PURPLE)])


def operator_charts(*, workers: list[Worker]) -> list[Chart]:
    return [earnings_chart(workers=workers), jobs_chart(workers=workers), reputation_chart(workers=workers)]
