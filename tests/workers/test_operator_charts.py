"""The operator's charts (apps/workers/charts.py): earnings and jobs per UTC day from the ledger and
the job records of the operator's own workers, reputation now, and the pages that show them."""

import json
from datetime import timedelta

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone

from apps.credits.ledger import PAYOUTS_PENDING_CODE, PROMO_CODE, TREASURY_CODE, Leg, ledger_post, system_account
from apps.credits.models import LedgerEntry, LedgerTransaction
from apps.credits.pricing import validator_pay
from apps.credits.services import validator_pay_for_reexecution, worker_account
from apps.marketplace.models import Job
from apps.workers.charts import earnings_chart, jobs_chart, reputation_chart
from apps.workers.models import Worker
from apps.workers.services import worker_register
from tests.support.finished_jobs import finished_job


def _backdate(job: Job, when) -> None:
    """As if the job had finished and been settled at `when`."""
    Job.objects.filter(id=job.id).update(finished_at=when)
    LedgerTransaction.objects.filter(reference=job.reference).update(created_at=when)
    LedgerEntry.objects.filter(transaction__reference=job.reference).update(created_at=when)


@pytest.fixture
def workers(bob):
    return [worker_register(operator=bob, name=name, tiers=["open"])[0] for name in ("rig-1", "rig-2")]


@pytest.fixture
def history(alice, mallory, workers):
    """Today: rig-1 completes a 50,000 job, fails one and is paid for a re-execution, then 1,000 is
    paid out; three days ago rig-2 completed a 20,000 job. Mallory's worker earns today too."""
    rig1, rig2 = workers
    with transaction.atomic():  # validators are paid from the treasury: a running node's has some
        ledger_post(kind="grant", reference="test:treasury", legs=[
            Leg(system_account(PROMO_CODE), -1_000_000), Leg(system_account(TREASURY_CODE), 1_000_000)])
    finished_job(user=alice, worker=rig1, charge=50_000)
    finished_job(user=alice, worker=rig1, failed=True)
    validator_pay_for_reexecution(validator=rig1, job_price=50_000, reference="validation:test")
    with transaction.atomic():
        ledger_post(kind="payout", reference="payout:test", legs=[
            Leg(worker_account(worker=rig1), -1_000), Leg(system_account(PAYOUTS_PENDING_CODE), 1_000)])
    _backdate(finished_job(user=alice, worker=rig2, charge=20_000), timezone.now() - timedelta(days=3))
    mallorys = worker_register(operator=mallory, name="mallory-1", tiers=["open"])[0]
    finished_job(user=alice, worker=mallorys, charge=90_000)


def test_earnings_are_the_workers_share_and_validator_pay_per_day_never_payouts(workers, history):
    chart = earnings_chart(workers=workers)
    earned = chart.series[0].values

    assert len(earned) == len(chart.x) == 30
    assert earned[-1] == 35_000 + validator_pay(50_000)  # 70% of 50,000, and the re-execution's pay
    assert earned[-4] == 14_000  # 70% of 20,000, three days ago
    assert sum(earned) == 35_000 + validator_pay(50_000) + 14_000  # nothing of mallory's
    assert chart.x[-1] - chart.x[-2] == 86_400 and chart.x[-1] % 86_400 == 0  # UTC days
    assert "Earned today: 0.0" in chart.summary and "in the last 30 days" in chart.summary


def test_one_workers_earnings_are_its_own(workers, history):
    assert sum(earnings_chart(workers=workers[1:]).series[0].values) == 14_000


def test_jobs_per_day_count_completed_and_failed_separately(workers, history):
    completed, failed = (s.values for s in jobs_chart(workers=workers).series)

    assert (completed[-1], failed[-1]) == (1, 1)
    assert (completed[-4], failed[-4]) == (1, 0)
    assert (sum(completed), sum(failed)) == (2, 1)


def test_reputation_is_each_workers_now_and_unmeasured_is_said(workers):
    Worker.objects.filter(id=workers[0].id).update(reputation=0.8, reputation_updated_at=timezone.now())
    workers[0].refresh_from_db()

    chart = reputation_chart(workers=workers)

    assert chart.x_labels == ["rig-1", "rig-2"] and chart.categories and chart.y_max == 1.0
    assert chart.series[0].values[0] == pytest.approx(0.8, abs=1e-3) and chart.series[0].values[1] is None
    assert "rig-1 0.80" in chart.summary and "rig-2 not measured yet" in chart.summary
    assert chart.rows() == [("rig-1", ["0.80"]), ("rig-2", ["—"])]


def _chart_data(page: str, key: str) -> dict:
    start = page.index(f'<script id="chart-{key}-data" type="application/json">')
    return json.loads(page[page.index(">", start) + 1:page.index("</script>", start)])


def test_the_operator_page_carries_each_charts_data_caption_and_table(bob, workers, history):
    client = Client()
    client.force_login(bob)

    page = client.get("/operator/").content.decode()

    for key in ("earnings", "jobs", "reputation"):
        assert f'data-chart="{key}"' in page and f'id="chart-{key}-summary"' in page
    assert _chart_data(page, "earnings")["series"][0]["values"][-4] == 14_000
    assert "uPlot.iife.min.js" in page and "js/charts.js" in page
    assert "<th scope=\"row\">" in page and "0.014" in page  # the table: three days ago's 14,000 µUSDC


def test_a_workers_page_charts_only_that_worker(bob, workers, history):
    client = Client()
    client.force_login(bob)

    page = client.get(f"/operator/workers/{workers[1].id}/").content.decode()

    assert sum(_chart_data(page, "earnings")["series"][0]["values"]) == 14_000
    assert sum(_chart_data(page, "jobs")["series"][0]["values"]) == 1


def test_an_operator_without_workers_sees_no_empty_charts(mallory):
    client = Client()
    client.force_login(mallory)

    assert "data-chart=" not in client.get("/operator/").content.decode()
