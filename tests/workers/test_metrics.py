"""Reputation from outcomes with decay, and speed measured by the node (EWMA)."""

import pytest
from django.utils import timezone

from apps.workers.metrics import (HALF_LIFE_SECONDS, PRIOR, after_outcome, decayed, ewma, worker_outcome_record,
                                  worker_speed_record)
from apps.workers.models import Worker, WorkerModelStats
from apps.workers.services import worker_register

NOW = timezone.now()


def test_reputation_moves_a_tenth_of_the_way_toward_each_outcome():
    assert after_outcome(0.5, NOW, NOW, "completed") == pytest.approx(0.55)
    assert after_outcome(0.5, NOW, NOW, "failed") == pytest.approx(0.45)


def test_a_failed_verification_costs_half_the_reputation():
    assert after_outcome(0.9, NOW, NOW, "verification_failed") == pytest.approx(0.45)


def test_idle_reputation_decays_halfway_to_the_prior_each_half_life():
    later = NOW + timezone.timedelta(seconds=HALF_LIFE_SECONDS)
    assert decayed(0.9, NOW, later) == pytest.approx(PRIOR + 0.2)
    assert decayed(0.1, NOW, later) == pytest.approx(PRIOR - 0.2)
    assert decayed(0.9, None, later) == 0.9


def test_reputation_stays_between_zero_and_one():
    reputation = 0.5
    for _ in range(200):
        reputation = after_outcome(reputation, NOW, NOW, "completed")
    assert 0.99 < reputation <= 1.0
    for _ in range(200):
        reputation = after_outcome(reputation, NOW, NOW, "verification_failed")
    assert 0.0 <= reputation < 0.01


def test_speed_averages_weigh_the_newest_sample_by_a_fifth():
    assert ewma(None, 100.0) == 100.0 and ewma(100.0, 200.0) == pytest.approx(120.0)


@pytest.mark.django_db
def test_outcomes_and_speed_are_recorded_on_the_worker(bob):
    worker, _ = worker_register(operator=bob, name="w", tiers=["open"])
    worker_outcome_record(worker_id=worker.id, outcome="completed")
    worker_outcome_record(worker_id=worker.id, outcome="failed")
    worker.refresh_from_db()
    assert (worker.jobs_completed, worker.jobs_failed) == (1, 1)
    assert worker.reputation == pytest.approx(0.55 + 0.1 * (0.0 - 0.55), abs=1e-6)
    worker_speed_record(worker_id=worker.id, model_id="m", ttft_ms=200.0, tokens_per_second=50.0)
    worker_speed_record(worker_id=worker.id, model_id="m", ttft_ms=100.0, tokens_per_second=None)
    stats = WorkerModelStats.objects.get(worker=worker, model_id="m")
    assert (stats.ttft_ms, stats.tokens_per_second, stats.samples) == (pytest.approx(180.0), 50.0, 2)
    assert Worker.objects.get(id=worker.id).reputation_updated_at is not None
