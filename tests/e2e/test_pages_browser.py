"""The landing page, the operator dashboard and the treasury console in a real browser: Debian's
Chromium, headless, driven by Playwright, against the real node (daphne) on the test database and
Redis. Each test saves a screenshot under test-output/.

The landing page's figures follow the network live: a job completes and a slash burns $PEER (both
written through the services, as the relay and verification write them), the beat task's tick
publishes the snapshot on /ws/network/, and the open page shows the new figures without a reload.
The dashboards draw their charts with uPlot from the figures the server rendered.
"""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from apps.credits.ledger import PROMO_CODE, TREASURY_CODE, Leg, ledger_post, system_account
from apps.credits.models import LedgerEntry, LedgerTransaction
from apps.credits.services import validator_pay_for_reexecution
from apps.credits.tasks import network_stats_publish_task
from apps.marketplace.models import Job
from apps.staking.services import bond_lock, bond_slash, peer_grant, peer_mint_initial_supply, peer_stake
from apps.workers.models import Worker
from apps.workers.services import worker_register
from tests.conftest import bond
from tests.support.finished_jobs import finished_job

from .browser_support import browser, in_thread, sign_up  # noqa: F401
from .conftest import OUTPUT

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
PEER = 10**9

# WCAG's contrast ratio of an element's text against the first opaque background behind it.
CONTRAST = """(selectors) => {
  const channels = (color) => color.match(/[\\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => [r, g, b].map((v) => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
    .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (element) => {
    for (; element; element = element.parentElement) {
      const color = channels(getComputedStyle(element).backgroundColor);
      if (color.length < 4 || color[3] === 1) return color.slice(0, 3);
    }
    return [255, 255, 255];
  };
  return Object.fromEntries(selectors.map((selector) => {
    const element = document.querySelector(selector);
    const [a, b] = [luminance(channels(getComputedStyle(element).color)), luminance(background(element))];
    return [selector, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
  }));
}"""


def _online(operator, name, tiers, status):
    worker = worker_register(operator=operator, name=name, tiers=tiers)[0]
    Worker.objects.filter(id=worker.id).update(status=status)
    return worker


def _stat(page, key):
    return page.locator(f'[data-stat="{key}"]').inner_text()


def _wait_for_stat(page, key, text, timeout=15_000):
    page.wait_for_function("([key, text]) => document.querySelector(`[data-stat=\"${key}\"]`).textContent === text",
                           arg=[key, text], timeout=timeout)


def _contrast(page, selectors):
    return page.evaluate(CONTRAST, selectors)


def _new_page(browser, errors):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page


@pytest.fixture
def fleet(bob, carol):
    return (bond(_online(bob, "bob-gpu", ["open", "verified"], Worker.Status.IDLE)),
            _online(carol, "carol-enclave", ["confidential"], Worker.Status.BUSY))


def test_the_landing_page_shows_the_network_and_follows_it_live(node_url, alice, fleet, browser):
    bobs, carols = fleet
    errors = []
    page = _new_page(browser, errors)

    page.goto(f"{node_url}/")
    assert (_stat(page, "workers_online"), _stat(page, "workers_verified"), _stat(page, "jobs_last_minute")) == \
        ("2", "1", "0")
    assert _stat(page, "peer_burned") == "0 PEER" and _stat(page, "treasury") == "0 USDC"
    page.locator('#live-state[data-state="waiting"]').wait_for(timeout=15_000)  # the socket is open

    in_thread(finished_job, user=alice, worker=bobs, charge=50_000, completion_tokens=300)
    in_thread(finished_job, user=alice, worker=carols, charge=50_000, completion_tokens=120, tier="confidential")
    in_thread(bond_slash, worker=bobs, amount=100 * PEER, reason="test: a proven fault", idempotency_key="e2e:slash")
    in_thread(network_stats_publish_task)  # the beat's tick

    _wait_for_stat(page, "jobs_last_minute", "2")
    assert _stat(page, "tokens_per_second") == "7.0"  # 420 tokens over the minute
    assert _stat(page, "peer_burned") == "100 PEER"
    assert _stat(page, "treasury") == "0.006 USDC" and _stat(page, "stakers_pool") == "0.024 USDC"
    assert page.locator("#live-state").inner_text() == "Live"
    assert page.locator("#live-state").get_attribute("role") == "status"
    page.wait_for_timeout(1600)  # the changed figures' highlight fades
    page.screenshot(path=OUTPUT / "landing-live.png", full_page=True)

    # Each figure is a labelled term; text reads at 4.5:1 or better.
    labels = page.locator(".figures dt").all_inner_texts()
    assert labels == ["Workers online", "Jobs per minute", "Tokens per second", "$PEER burned", "Treasury",
                      "Stakers' pool"]
    ratios = _contrast(page, [".figure dt", ".figure .value", ".figure .detail", "#live-state", ".updated",
                              ".pitch p"])
    assert all(ratio >= 4.5 for ratio in ratios.values()), ratios

    # A quiet minute later the next tick brings the rate back down, still live.
    in_thread(lambda: Job.objects.update(finished_at=timezone.now() - timedelta(minutes=2)))
    in_thread(network_stats_publish_task)
    _wait_for_stat(page, "jobs_last_minute", "0")
    assert _stat(page, "tokens_per_second") == "0.0" and _stat(page, "peer_burned") == "100 PEER"
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=OUTPUT / "landing-narrow.png", full_page=True)
    assert errors == []


def _operator_history(email, buyer):
    """The operator's two workers, each with jobs over the last week (one of rig-1's failed), a
    re-execution rig-1 was paid for, and both with a measured reputation."""
    operator = get_user_model().objects.get(email=email)
    rig1 = worker_register(operator=operator, name="rig-1", tiers=["open", "verified"])[0]
    rig2 = worker_register(operator=operator, name="rig-2", tiers=["open"])[0]
    now = timezone.now()
    for worker, days, charge in ((rig1, 6, 40_000), (rig1, 4, 90_000), (rig2, 4, 30_000), (rig1, 2, 120_000),
                                 (rig2, 0, 70_000)):
        job = finished_job(user=buyer, worker=worker, charge=charge)
        when = now - timedelta(days=days)
        Job.objects.filter(id=job.id).update(finished_at=when)
        LedgerTransaction.objects.filter(reference=job.reference).update(created_at=when)
        LedgerEntry.objects.filter(transaction__reference=job.reference).update(created_at=when)
    finished_job(user=buyer, worker=rig1, failed=True)
    with transaction.atomic():  # validators are paid from the treasury
        ledger_post(kind="grant", reference="test:treasury", legs=[
            Leg(system_account(PROMO_CODE), -1_000_000), Leg(system_account(TREASURY_CODE), 1_000_000)])
    validator_pay_for_reexecution(validator=rig1, job_price=60_000, reference="validation:e2e")
    Worker.objects.filter(id=rig1.id).update(reputation=0.82, reputation_updated_at=now)
    Worker.objects.filter(id=rig2.id).update(reputation=0.41, reputation_updated_at=now)
    return rig1.id


def _charts_drawn(page, keys):
    for key in keys:
        page.locator(f'[data-chart="{key}"][data-drawn="true"] canvas').first.wait_for(timeout=15_000)
    return page.evaluate("""(keys) => Object.fromEntries(keys.map((key) => {
        const plot = window.peerCharts[key];
        return [key, {series: plot.data.length - 1,
                      total: plot.data.slice(1).flat().reduce((sum, v) => sum + (v || 0), 0),
                      width: plot.width}];
      }))""", keys)


def test_the_operator_dashboard_draws_earnings_jobs_and_reputation(node_url, alice, browser):
    errors = []
    page = _new_page(browser, errors)
    sign_up(page, node_url, "olga@example.org")
    rig1_id = in_thread(_operator_history, email="olga@example.org", buyer=alice)

    page.goto(f"{node_url}/operator/")
    drawn = _charts_drawn(page, ["earnings", "jobs", "reputation"])

    assert drawn["earnings"]["total"] > 0 and drawn["jobs"]["series"] == 2 and drawn["jobs"]["total"] == 6
    assert drawn["reputation"]["total"] == pytest.approx(0.82 + 0.41, abs=0.01)
    assert all(chart["width"] >= 280 for chart in drawn.values())
    assert "rig-1 0.82" in page.locator("#chart-reputation-summary").inner_text()
    # The text alternative: a caption with the latest figure, and the table behind a labelled toggle.
    toggle = page.get_by_text("Earnings per day: the figures as a table")
    toggle.focus()
    page.keyboard.press("Enter")
    assert page.locator("#chart-earnings .chart-table table").is_visible()
    assert page.locator("#chart-earnings .chart-table tbody tr").count() == 30
    ratios = _contrast(page, [".chart-summary", ".chart-table summary", ".u-legend"])
    assert all(ratio >= 4.5 for ratio in ratios.values()), ratios
    page.screenshot(path=OUTPUT / "operator-dashboard.png", full_page=True)

    page.goto(f"{node_url}/operator/workers/{rig1_id}/")
    drawn = _charts_drawn(page, ["earnings", "jobs"])
    assert drawn["earnings"]["total"] > 0 and drawn["jobs"]["total"] == 4  # rig-1's own: 3 completed, 1 failed
    page.screenshot(path=OUTPUT / "operator-worker.png", full_page=True)
    assert errors == []


def _treasury_history(email, buyer):
    """Over three weeks: the mint, a grant, a stake and a bond, three slashes and four jobs."""
    staff = get_user_model().objects.get(email=email)
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    operator = get_user_model().objects.create_user(username="tess", email="tess@example.org", password="x" * 20)
    worker = worker_register(operator=operator, name="tess-gpu", tiers=["open", "verified"])[0]
    now = timezone.now()

    def backdate(txn, days):
        LedgerTransaction.objects.filter(id=txn.id).update(created_at=now - timedelta(days=days))
        LedgerEntry.objects.filter(transaction=txn).update(created_at=now - timedelta(days=days))

    backdate(peer_mint_initial_supply(), 20)
    backdate(peer_grant(user=operator, amount=50_000 * PEER), 12)
    backdate(peer_stake(user=operator, amount=20_000 * PEER), 9)
    backdate(bond_lock(worker=worker, amount=2_000 * PEER), 9)
    for days, amount in ((7, 200), (3, 50), (0, 120)):
        slash = bond_slash(worker=worker, amount=amount * PEER, reason="test", idempotency_key=f"e2e:slash:{days}")
        backdate(slash.transaction, days)
    for days, charge in ((8, 400_000), (5, 900_000), (2, 300_000), (0, 700_000)):
        job = finished_job(user=buyer, worker=worker, charge=charge)
        backdate(LedgerTransaction.objects.get(reference=job.reference, kind="capture"), days)


def test_the_treasury_console_draws_supply_burns_and_balances(node_url, alice, browser):
    errors = []
    page = _new_page(browser, errors)
    sign_up(page, node_url, "tom@example.org")
    in_thread(_treasury_history, email="tom@example.org", buyer=alice)

    page.goto(f"{node_url}/treasury/")
    drawn = _charts_drawn(page, ["supply", "staking", "burns", "treasury"])

    assert drawn["supply"]["total"] > 0 and drawn["staking"]["series"] == 2 and drawn["staking"]["total"] > 0
    assert drawn["burns"]["total"] == pytest.approx(370)  # PEER, as drawn
    assert drawn["treasury"]["series"] == 2 and drawn["treasury"]["total"] > 0
    assert "ever: 370 PEER" in page.locator("#chart-burns-summary").inner_text()
    assert page.locator("#usdc-treasury").is_visible()  # the figures are still there, refreshed by htmx
    page.screenshot(path=OUTPUT / "treasury-console.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function("() => window.peerCharts.supply.width < 390")  # redrawn to fit
    page.screenshot(path=OUTPUT / "treasury-console-narrow.png", full_page=True)
    assert errors == []
