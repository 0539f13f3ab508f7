"""Measured, not declared: the node times every relayed job and scores every outcome.

Speed: time to first token and tokens per second per (worker, model), as exponentially weighted
moving averages (weight 0.2 for the newest sample), from timestamps the relay takes itself.

Reputation (0..1, new workers start at 0.5): each outcome moves it a tenth of the way toward
1 (completed) or 0 (failed, timed out, dropped); a failed verification moves it half the way to 0.
Idle reputation decays toward 0.5 with a half-life of 7 days, so old glory and old sins fade.
Outcomes the client caused (it left, it sent bad input) do not count.

Every relayed job records both, so on PostgreSQL each is one statement computing the rule in SQL
(the Python functions below are the rule, and tests hold the two to the same figures); elsewhere
(SQLite, for `make run`) the row is read under its lock and written back.
"""

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from .models import Worker, WorkerModelStats

SPEED_WEIGHT = 0.2
PRIOR = 0.5
HALF_LIFE_SECONDS = 7 * 24 * 3600
OUTCOMES = {"completed": (1.0, 0.1), "failed": (0.0, 0.1), "verification_passed": (1.0, 0.1),
            "verification_failed": (0.0, 0.5)}


def decayed(reputation: float, updated_at, now) -> float:
    """Reputation as of `now`: drifted toward the prior for the time since it last changed."""
    if updated_at is None:
        return reputation
    elapsed = max((now - updated_at).total_seconds(), 0.0)
    return PRIOR + (reputation - PRIOR) * 0.5 ** (elapsed / HALF_LIFE_SECONDS)


def after_outcome(reputation: float, updated_at, now, outcome: str) -> float:
    target, weight = OUTCOMES[outcome]
    current = decayed(reputation, updated_at, now)
    # current + weight * (target - current), written as the SQL below computes it
    return min(max(current * (1.0 - weight) + weight * target, 0.0), 1.0)


# Databases where an outcome and a speed sample are folded in by one statement each (the ORM's
# read, lock and write cost 11% of the node's Python samples under load: docs/benchmarks.md).
# Emptied by tests to run the portable path here too.
ONE_STATEMENT_VENDORS = {"postgresql"}


def ewma(previous: float | None, sample: float) -> float:
    return sample if previous is None else previous + SPEED_WEIGHT * (sample - previous)


def worker_outcome_record(*, worker_id, outcome: str) -> float:
    """Fold one outcome into the worker's reputation. Locks the worker row."""
    with transaction.atomic():
        return _outcome_fold(worker_id=worker_id, outcome=outcome)


def worker_speed_record(*, worker_id, model_id: str, ttft_ms: float | None, tokens_per_second: float | None) -> None:
    """Fold one job's measured speed into the (worker, model) averages. Locks that stats row."""
    with transaction.atomic():
        _speed_fold(worker_id=worker_id, model_id=model_id, ttft_ms=ttft_ms, tokens_per_second=tokens_per_second)


def worker_completion_record(*, worker_id, model_id: str, ttft_ms: float | None,
                             tokens_per_second: float | None) -> None:
    """A completed job: its speed and its outcome, in one transaction (the relay's every job;
    on PostgreSQL one statement, so one round trip and no BEGIN or COMMIT of its own). Locks the
    stats row and the worker row."""
    if connection.vendor in ONE_STATEMENT_VENDORS:
        _completion_fold_sql(worker_id=worker_id, model_id=model_id, ttft_ms=ttft_ms,
                             tokens_per_second=tokens_per_second, now=timezone.now())
        return
    with transaction.atomic():
        _speed_fold(worker_id=worker_id, model_id=model_id, ttft_ms=ttft_ms, tokens_per_second=tokens_per_second)
        _outcome_fold(worker_id=worker_id, outcome="completed")


def _outcome_fold(*, worker_id, outcome: str) -> float:
    now = timezone.now()
    if connection.vendor in ONE_STATEMENT_VENDORS:
        return _outcome_fold_sql(worker_id=worker_id, outcome=outcome, now=now)
    worker = Worker.objects.select_for_update().only("reputation", "reputation_updated_at").get(id=worker_id)
    reputation = after_outcome(worker.reputation, worker.reputation_updated_at, now, outcome)
    counter = "jobs_completed" if outcome == "completed" else "jobs_failed" if outcome == "failed" else None
    updates = {"reputation": reputation, "reputation_updated_at": now}
    if counter:
        updates[counter] = F(counter) + 1
    Worker.objects.filter(id=worker_id).update(**updates)
    return reputation


def _speed_fold(*, worker_id, model_id: str, ttft_ms: float | None, tokens_per_second: float | None) -> None:
    if connection.vendor in ONE_STATEMENT_VENDORS:
        _speed_fold_sql(worker_id=worker_id, model_id=model_id, ttft_ms=ttft_ms, tokens_per_second=tokens_per_second)
        return
    stats, _ = WorkerModelStats.objects.select_for_update().get_or_create(worker_id=worker_id, model_id=model_id)
    if ttft_ms is not None:
        stats.ttft_ms = ewma(stats.ttft_ms, ttft_ms)
    if tokens_per_second is not None:
        stats.tokens_per_second = ewma(stats.tokens_per_second, tokens_per_second)
    stats.samples += 1
    stats.save(update_fields=["ttft_ms", "tokens_per_second", "samples", "updated_at"])


# after_outcome in SQL, on the row's own columns only: under concurrent outcomes the update then
# folds into the row it waited for (READ COMMITTED re-reads it), as the locked read does.
_DECAYED_SQL = (f"CASE WHEN reputation_updated_at IS NULL THEN reputation ELSE {PRIOR} + (reputation - {PRIOR}) * "
                f"power(0.5::float8, GREATEST(EXTRACT(EPOCH FROM (%(now)s - reputation_updated_at))::float8, 0.0) "
                f"/ {HALF_LIFE_SECONDS}) END")
_OUTCOME_SQL = f"""
UPDATE {Worker._meta.db_table} SET
    reputation = LEAST(GREATEST(({_DECAYED_SQL}) * (1.0 - %(weight)s) + %(weight)s * %(target)s, 0.0), 1.0),
    reputation_updated_at = %(now)s,
    jobs_completed = jobs_completed + %(completed)s,
    jobs_failed = jobs_failed + %(failed)s
WHERE id = %(worker_id)s
RETURNING reputation
"""


def _outcome_fold_sql(*, worker_id, outcome: str, now) -> float:
    target, weight = OUTCOMES[outcome]
    with connection.cursor() as cursor:
        cursor.execute(_OUTCOME_SQL, {"weight": weight, "target": target, "now": now, "worker_id": worker_id,
                                      "completed": int(outcome == "completed"), "failed": int(outcome == "failed")})
        row = cursor.fetchone()
    if row is None:
        raise Worker.DoesNotExist(f"no worker {worker_id}")
    return row[0]


# ewma in SQL: the first sample is the average; a missing sample leaves it as it was.
_SPEED_SQL = f"""
INSERT INTO {WorkerModelStats._meta.db_table} AS s (worker_id, model_id, ttft_ms, tokens_per_second, samples, updated_at)
VALUES (%(worker_id)s, %(model_id)s, %(ttft_ms)s, %(tps)s, 1, %(now)s)
ON CONFLICT (worker_id, model_id) DO UPDATE SET
    ttft_ms = COALESCE(s.ttft_ms + {SPEED_WEIGHT} * (EXCLUDED.ttft_ms - s.ttft_ms), EXCLUDED.ttft_ms, s.ttft_ms),
    tokens_per_second = COALESCE(s.tokens_per_second + {SPEED_WEIGHT} * (EXCLUDED.tokens_per_second
                                 - s.tokens_per_second), EXCLUDED.tokens_per_second, s.tokens_per_second),
    samples = s.samples + 1,
    updated_at = EXCLUDED.updated_at
"""


def _speed_fold_sql(*, worker_id, model_id: str, ttft_ms: float | None, tokens_per_second: float | None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(_SPEED_SQL, {"worker_id": worker_id, "model_id": model_id, "ttft_ms": ttft_ms,
                                    "tps": tokens_per_second, "now": timezone.now()})


# Both folds of a completed job in one statement: the speed sample's upsert as a data-modifying
# CTE, the outcome as the statement itself.
_COMPLETION_SQL = f"WITH speed AS ({_SPEED_SQL}) {_OUTCOME_SQL}"


def _completion_fold_sql(*, worker_id, model_id: str, ttft_ms: float | None, tokens_per_second: float | None,
                         now) -> None:
    target, weight = OUTCOMES["completed"]
    with connection.cursor() as cursor:
        cursor.execute(_COMPLETION_SQL, {"worker_id": worker_id, "model_id": model_id, "ttft_ms": ttft_ms,
                                         "tps": tokens_per_second, "now": now, "weight": weight, "target": target,
                                         "completed": 1, "failed": 0})
        if cursor.fetchone() is None:
            raise Worker.DoesNotExist(f"no worker {worker_id}")
