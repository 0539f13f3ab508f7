"""The job path's statements written by hand, for PostgreSQL: the reads and writes every request
makes, where the ORM spent more Python building each query than PostgreSQL took to run it
(docs/benchmarks.md, "The job path's statements by hand"). services.py calls these when the
database is one of HAND_WRITTEN_VENDORS and keeps the ORM's way for the others (SQLite, for
`make run` without services); the tests run both.
"""

from django.contrib.auth import get_user_model
from django.db import connection

from apps.accounts.models import ApiKey
from apps.workers.models import CatalogueModel, Worker
from apps.workers.services import CLAIM_CTES, claim_run
from peercycles.sql import columns_of, instance_from_row, instance_insert, select_list

from .models import Job

# Emptied by tests to run the ORM's way on PostgreSQL too.
HAND_WRITTEN_VENDORS = {"postgresql"}

_ENTRY_COLUMNS = columns_of(CatalogueModel)
_JOB_COLUMNS = columns_of(Job)
_SETTLING_WORKER = columns_of(Worker, {"id", "operator_id", "signing_key"})  # what a settlement reads of it


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def caller_and_entry_row(*, key_hash: str, name: str) -> tuple | None:
    """For an active key with this hash whose user is active: (key id, its last_used_at, the user
    (its id only; other fields load on access), the active catalogue entry called `name` or
    None). None for any other key. One statement."""
    user_model = get_user_model()
    sql = (f"SELECT k.id, k.last_used_at, u.id, u.is_active, {select_list(CatalogueModel, _ENTRY_COLUMNS, 'c')} "
           f"FROM {_table(ApiKey)} k JOIN {_table(user_model)} u ON u.id = k.user_id "
           f"LEFT JOIN {_table(CatalogueModel)} c ON c.name = %s AND c.active "
           f"WHERE k.key_hash = %s AND k.revoked_at IS NULL")
    with connection.cursor() as cursor:
        cursor.execute(sql, [name, key_hash])
        row = cursor.fetchone()
    if row is None or not row[3]:
        return None
    key_id, last_used_at, user_id = row[:3]
    entry_values = row[4:]
    entry = instance_from_row(CatalogueModel, _ENTRY_COLUMNS, entry_values) if entry_values[0] is not None else None
    return key_id, last_used_at, instance_from_row(user_model, ["id"], [user_id]), entry


def job_insert_counting_queue(job: Job) -> int:
    """INSERT the new job and return its model's queue as it was before (jobs held and not yet
    started, as selectors.jobs_waiting_count): one statement where the count and the insert were
    two round trips. The caller rolls the insert back when the queue was full."""
    waiting = (f"(SELECT count(*) FROM {_table(Job)} WHERE public_model = %s AND tier = %s AND status = %s "
               f"AND hold_state = %s)")
    return instance_insert(job, returning=waiting,
                           params=[job.public_model, job.tier, Job.Status.QUEUED, Job.HoldState.HELD])


def job_start_row(*, job_id, worker_id, model_digest: str, price_per_token: int, now) -> bool:
    """services.job_start's update: False when the job is no longer held or the price is above
    its ceiling."""
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {_table(Job)} SET status = %s, worker_id = %s, model_digest = %s, "
                       f"price_per_token = %s, started_at = %s "
                       f"WHERE id = %s AND hold_state = %s AND price_ceiling >= %s",
                       [Job.Status.RUNNING, worker_id, model_digest, price_per_token, now, job_id,
                        Job.HoldState.HELD, price_per_token])
        return cursor.rowcount == 1


def _claim_and_start_sql() -> str:
    return f"""
WITH {CLAIM_CTES}, started AS (
    UPDATE {_table(Job)} j SET status = %(running)s, worker_id = claimed.id, model_digest = wanted.model->>'digest',
        price_per_token = wanted.price, started_at = %(now)s
    FROM claimed JOIN wanted ON wanted.id = claimed.id
    WHERE j.id = %(job)s AND j.hold_state = %(held)s AND j.price_ceiling >= wanted.price
    RETURNING j.id
)
SELECT claimed.id, claimed.channel_name, EXISTS (SELECT 1 FROM started) FROM claimed
"""


def worker_claim_and_job_start(*, ranked: list[tuple], job_id, now) -> tuple | None:
    """workers.services.worker_claim_first and services.job_start in one statement: claim the
    first of `ranked` ((worker id, model entry, price per token), best first) that is idle, not
    revoked and still serves that model, and start the job on it at that worker's price. (worker
    id, its channel, the job started) or None when none was free; the job is not started (False)
    when it is no longer held or the price is above its ceiling, and the worker is then left
    claimed for the caller to release."""
    return claim_run(_claim_and_start_sql(), ranked=ranked,
                     params={"job": str(job_id), "now": now, "running": Job.Status.RUNNING,
                             "held": Job.HoldState.HELD})


def job_locked(*, job_id) -> Job:
    """The job, its row locked (FOR UPDATE), with its worker's id, operator and signing key and
    its user's id loaded (what a settlement reads of them). Raises Job.DoesNotExist."""
    sql = (f"SELECT {select_list(Job, _JOB_COLUMNS, 'j')}, {select_list(Worker, _SETTLING_WORKER, 'w')} "
           f"FROM {_table(Job)} j LEFT JOIN {_table(Worker)} w ON w.id = j.worker_id "
           f"WHERE j.id = %s FOR UPDATE OF j")
    with connection.cursor() as cursor:
        cursor.execute(sql, [job_id])
        row = cursor.fetchone()
    if row is None:
        raise Job.DoesNotExist(f"no job {job_id}")
    job = instance_from_row(Job, _JOB_COLUMNS, row[:len(_JOB_COLUMNS)])
    worker = row[len(_JOB_COLUMNS):]
    job.worker = instance_from_row(Worker, _SETTLING_WORKER, worker) if worker[0] is not None else None
    job.user = instance_from_row(get_user_model(), ["id"], [job.user_id])
    return job
