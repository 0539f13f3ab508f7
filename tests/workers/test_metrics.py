"""Reputation from outcomes with decay, and speed measured by the node (EWMA)."""


import pytest
from django.utils import timezone

from apps.workers import metrics
from apps.workers.metrics import (HALF_LIFE_SECONDS, PRIOR, after_outcome, decayed, ewma, worker_completion_record,
                                  worker_outcome_record, worker_speed_record)
from apps.workers.models import Worker, WorkerModelStats
from apps.workers.services import worker_register
from tests.support.races import run_at_once

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


@pytest.fixture(params=["one statement", "portable"])
def fold_path(request, monkeypatch):
    """Both ways an outcome or a speed sample is folded in: one statement computing the rule in
    SQL (PostgreSQL, as shipped) and the portable read-lock-write `make run`'s SQLite takes."""
    if request.param == "portable":
        monkeypatch.setattr(metrics, "ONE_STATEMENT_VENDORS", set())
    return request.param


@pytest.mark.django_db
def test_outcomes_and_speed_are_recorded_on_the_worker(bob, fold_path):
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


@pytest.mark.django_db
@pytest.mark.parametrize("outcome", sorted(metrics.OUTCOMES))
@pytest.mark.parametrize("reputation, idle_seconds", [(0.93, 3 * 24 * 3600), (0.12, 40 * 24 * 3600), (0.5, 0),
                                                      (0.999, 1.5)])
def test_the_database_folds_an_outcome_exactly_as_the_rule_says(bob, fold_path, outcome, reputation, idle_seconds):
    worker, _ = worker_register(operator=bob, name="w", tiers=["open"])
    then = timezone.now() - timezone.timedelta(seconds=idle_seconds)
    Worker.objects.filter(id=worker.id).update(reputation=reputation, reputation_updated_at=then)
    returned = worker_outcome_record(worker_id=worker.id, outcome=outcome)
    worker.refresh_from_db()
    expected = after_outcome(reputation, then, worker.reputation_updated_at, outcome)
    assert returned == worker.reputation == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert (worker.jobs_completed, worker.jobs_failed) == (int(outcome == "completed"), int(outcome == "failed"))


@pytest.mark.django_db
def test_a_worker_never_rated_starts_from_its_reputation_without_decay(bob, fold_path):
    worker, _ = worker_register(operator=bob, name="w", tiers=["open"])
    Worker.objects.filter(id=worker.id).update(reputation=0.8, reputation_updated_at=None)
    assert worker_outcome_record(worker_id=worker.id, outcome="failed") == pytest.approx(0.72)


@pytest.mark.django_db
def test_an_outcome_for_a_worker_that_does_not_exist_raises(fold_path):
    with pytest.raises(Worker.DoesNotExist):
        worker_outcome_record(worker_id="00000000-0000-0000-0000-000000000000", outcome="completed")


@pytest.mark.django_db(transaction=True)
def test_concurrent_outcomes_and_speed_samples_are_all_counted(bob, fold_path):
    """Each fold is read-modify-write: none may be lost to another thread's (the suite runs on
    PostgreSQL only: tests/conftest.py stops it elsewhere)."""
    worker, _ = worker_register(operator=bob, name="w", tiers=["open"])

    def record(_):
        for _ in range(25):
            worker_completion_record(worker_id=worker.id, model_id="m", ttft_ms=100.0, tokens_per_second=10.0)

    assert run_at_once(record, 4) == [None] * 4  # no thread raised
    worker.refresh_from_db()
    assert worker.jobs_completed == 100
    assert worker.reputation == pytest.approx(1 - 0.5 * 0.9 ** 100, abs=1e-5)  # less a moment of decay
    assert WorkerModelStats.objects.get(worker=worker, model_id="m").samples == 100
