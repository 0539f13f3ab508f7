"""The treasury console's charts (apps/credits/charts.py): $PEER supply, burns and the USDC
treasury and stakers' pool per UTC day, read back from the ledger; and the page that shows them."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from apps.credits.charts import treasury_charts
from apps.credits.models import LedgerEntry, LedgerTransaction
from apps.credits.pricing import split_capture
from apps.staking.services import bond_lock, bond_slash, peer_grant, peer_mint_initial_supply, peer_stake
from apps.workers.services import worker_register
from tests.support.finished_jobs import finished_job

pytestmark = pytest.mark.django_db
PEER = 10**9


def _backdate(txn: LedgerTransaction, days: int) -> None:
    when = timezone.now() - timedelta(days=days)
    LedgerTransaction.objects.filter(id=txn.id).update(created_at=when)
    LedgerEntry.objects.filter(transaction=txn).update(created_at=when)


@pytest.fixture
def history(alice, bob):
    """Ten days ago the supply was minted; five days ago bob got 5,000 PEER, staked 2,000 and bonded
    1,500 to his worker; today that bond is slashed by 150 (burned) and two jobs are captured, one
    of them two days ago."""
    _backdate(peer_mint_initial_supply(), 10)
    worker = worker_register(operator=bob, name="rig", tiers=["open", "verified"])[0]
    for txn in (peer_grant(user=bob, amount=5_000 * PEER), peer_stake(user=bob, amount=2_000 * PEER),
                bond_lock(worker=worker, amount=1_500 * PEER)):
        _backdate(txn, 5)
    bond_slash(worker=worker, amount=150 * PEER, reason="test: a proven fault", idempotency_key="test:slash")
    earlier = finished_job(user=alice, worker=worker, charge=20_000)
    _backdate(LedgerTransaction.objects.get(reference=earlier.reference, kind="capture"), 2)
    finished_job(user=alice, worker=worker, charge=50_000)
    return worker


def _charts():
    return {chart.key: chart for chart in treasury_charts()}


def test_supply_steps_up_at_the_mint_and_down_by_what_is_burned(history):
    charts = _charts()
    (circulating,), (staked, bonded) = ((s.values for s in charts[key].series) for key in ("supply", "staking"))
    supply = settings.PEER_INITIAL_SUPPLY

    assert circulating[-12] == 0 and circulating[-11] == supply  # minted ten days ago
    assert circulating[-1] == supply - 150 * PEER
    assert staked[-7] == 0 and staked[-6] == staked[-1] == 2_000 * PEER
    assert bonded[-6] == 1_500 * PEER and bonded[-1] == 1_350 * PEER


def test_burns_are_counted_on_the_day_they_happen(history):
    chart = _charts()["burns"]
    burned = chart.series[0].values

    assert burned[-1] == 150 * PEER and sum(burned) == 150 * PEER
    assert "Burned today: 150 PEER" in chart.summary and "ever: 150 PEER" in chart.summary


def test_the_treasury_and_the_pool_close_each_day_with_their_balance(history):
    chart = _charts()["treasury"]
    treasury, pool = (s.values for s in chart.series)
    early, late = split_capture(20_000), split_capture(50_000)

    assert treasury[-4] == 0 and treasury[-3] == treasury[-2] == early.treasury
    assert treasury[-1] == early.treasury + late.treasury
    assert pool[-1] == early.stakers_pool + late.stakers_pool
    assert "Treasury now: 0.0042 USDC" in chart.summary  # 6% of 0.07 USDC
    assert chart.rows()[-1] == (timezone.now().date().isoformat(), ["0.0042", "0.0168"])


def test_an_empty_ledger_charts_zeros(db):
    for chart in treasury_charts():
        assert all(value == 0 for series in chart.series for value in series.values), chart.key


def test_the_console_page_has_the_charts_and_its_htmx_refresh_does_not_recompute_them(client, carol, history):
    carol.is_staff = True
    carol.save(update_fields=["is_staff"])
    client.force_login(carol)

    page = client.get("/treasury/").content.decode()
    partial = client.get("/treasury/", headers={"HX-Request": "true"}).content.decode()

    for key in ("supply", "staking", "burns", "treasury"):
        assert f'data-chart="{key}"' in page and f'<script id="chart-{key}-data"' in page
    assert "data-chart=" not in partial
