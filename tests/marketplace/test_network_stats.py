"""The network's live figures (apps/marketplace/network_stats.py): what the landing page shows and
what the beat task publishes on /ws/network/, checked against known jobs, workers and ledger."""

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.utils import timezone

from apps.credits.pricing import split_capture
from apps.credits.tasks import network_stats_publish_task
from apps.marketplace.network_stats import network_stats_get, network_stats_text
from apps.staking.services import bond_slash
from apps.workers.models import Worker
from apps.workers.services import worker_register
from peercycles.asgi import application
from tests.conftest import bond
from tests.support.finished_jobs import finished_job


def _worker(operator, name, tiers, status):
    worker, _ = worker_register(operator=operator, name=name, tiers=tiers)
    Worker.objects.filter(id=worker.id).update(status=status)
    worker.status = status
    return worker


@pytest.fixture
def fleet(bob, carol):
    return {"idle": _worker(bob, "bob-1", ["open", "verified"], Worker.Status.IDLE),
            "busy": _worker(bob, "bob-2", ["verified"], Worker.Status.BUSY),
            "enclave": _worker(carol, "carol-1", ["confidential"], Worker.Status.BUSY),
            "offline": _worker(carol, "carol-2", ["open"], Worker.Status.OFFLINE)}


def test_idle_and_busy_workers_count_as_online_in_each_of_their_tiers(fleet):
    stats = network_stats_get()

    assert stats.workers_online == 3
    assert stats.workers_by_tier == {"open": 1, "verified": 2, "confidential": 1}


def test_only_jobs_completed_in_the_last_minute_count_toward_jobs_and_tokens(alice, fleet):
    now = timezone.now()
    finished_job(user=alice, worker=fleet["idle"], completion_tokens=100, finished_at=now - timedelta(seconds=5))
    finished_job(user=alice, worker=fleet["busy"], completion_tokens=26, finished_at=now - timedelta(seconds=59))
    finished_job(user=alice, worker=fleet["busy"], completion_tokens=500, finished_at=now - timedelta(seconds=61))
    finished_job(user=alice, worker=fleet["idle"], failed=True, finished_at=now - timedelta(seconds=1))

    stats = network_stats_get(now=now)

    assert stats.jobs_last_minute == 2
    assert stats.tokens_per_second == 2.1  # (100 + 26) / 60
    assert network_stats_get(now=now + timedelta(minutes=2)).jobs_last_minute == 0  # a quiet minute falls to 0


def test_burned_peer_treasury_and_pool_are_the_ledgers_balances(alice, fleet):
    finished_job(user=alice, worker=fleet["idle"], charge=50_000)
    finished_job(user=alice, worker=fleet["busy"], charge=33_333)
    bond(fleet["busy"])
    bond_slash(worker=fleet["busy"], amount=7 * 10**9, reason="test: a proven fault", idempotency_key="test:slash")

    stats = network_stats_get()

    assert stats.peer_burned == 7 * 10**9
    assert stats.treasury == split_capture(50_000).treasury + split_capture(33_333).treasury
    assert stats.stakers_pool == split_capture(50_000).stakers_pool + split_capture(33_333).stakers_pool


def test_a_node_with_nothing_yet_reads_zeros_without_creating_accounts(db):
    stats = network_stats_get()

    assert (stats.workers_online, stats.jobs_last_minute, stats.tokens_per_second, stats.peer_burned,
            stats.treasury) == (0, 0, 0.0, 0, 0)
    assert stats.workers_by_tier == {"open": 0, "verified": 0, "confidential": 0}


def test_the_figures_read_as_text_in_whole_units_exactly(alice, fleet):
    finished_job(user=alice, worker=fleet["idle"], charge=50_000, completion_tokens=90)
    bond(fleet["busy"])
    bond_slash(worker=fleet["busy"], amount=1_500_000_001, reason="test", idempotency_key="test:slash")

    text = network_stats_text(network_stats_get())

    assert text["peer_burned"] == "1.500000001 PEER"
    assert text["treasury"] == "0.003 USDC"  # 6% of 0.05 USDC
    assert text["stakers_pool"] == "0.012 USDC"
    assert text["tokens_per_second"] == "1.5"
    assert (text["workers_online"], text["workers_verified"], text["jobs_last_minute"]) == ("3", "2", "1")


def test_the_landing_page_renders_the_figures_and_the_live_indicator(alice, fleet):
    finished_job(user=alice, worker=fleet["idle"], charge=50_000, completion_tokens=90)

    page = Client().get("/").content.decode()

    assert 'data-stat="workers_online">3<' in page and 'data-stat="workers_verified">2<' in page
    assert 'data-stat="jobs_last_minute">1<' in page and 'data-stat="tokens_per_second">1.5<' in page
    assert 'data-stat="treasury">0.003 USDC<' in page
    assert 'id="live-state" role="status"' in page and 'data-socket="/ws/network/"' in page


@pytest.mark.django_db(transaction=True)
async def test_each_beat_tick_publishes_the_figures_to_watchers_of_the_network(alice, fleet):
    watcher = WebsocketCommunicator(application, "/ws/network/")
    connected, _ = await watcher.connect()
    assert connected
    await database_sync_to_async(finished_job)(user=alice, worker=fleet["idle"], charge=50_000,
                                               completion_tokens=120)

    await database_sync_to_async(network_stats_publish_task)()
    event = await watcher.receive_json_from(timeout=5)
    await watcher.disconnect()

    assert event["type"] == "network.stats"
    assert event["stats"] == {**event["stats"], "workers_online": 3, "jobs_last_minute": 1,
                              "tokens_per_second": 2.0, "treasury": 3_000}
    assert event["stats"]["workers_by_tier"] == {"open": 1, "verified": 2, "confidential": 1}
    assert event["text"]["treasury"] == "0.003 USDC" and event["text"]["workers_confidential"] == "1"


def test_the_beat_runs_the_publishing_task_every_five_seconds_and_drops_a_late_tick(settings):
    from peercycles.celery import app

    entry = next(entry for entry in settings.CELERY_BEAT_SCHEDULE.values()
                 if entry["task"] == network_stats_publish_task.name)

    assert entry["schedule"] == 5.0 and entry["options"]["expires"] <= entry["schedule"]
    assert entry["task"] in app.tasks
