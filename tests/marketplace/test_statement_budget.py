"""What one job costs the database, statement by statement: a budget, so that a change that adds
round trips to every job is noticed here rather than in the benchmark (docs/benchmarks.md). The
counts are exact figures of the code, not timings: they do not depend on the machine."""

import json
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.accounts.services import api_key_issue
from apps.credits.services import credits_grant
from apps.marketplace.demo import catalogue_seed_builtin
from apps.marketplace.relay import JobRelay
from apps.marketplace.requests import parse_chat_request
from apps.marketplace.services import caller_and_entry, job_create, job_create_and_claim
from apps.workers.models import CatalogueModel, Worker
from apps.workers.services import worker_register, worker_release

pytestmark = pytest.mark.django_db
# Statements per job on the hot path (see them with -s), savepoints included: here every
# transaction is a savepoint in the test's own, in production a BEGIN and a COMMIT. Before the
# roster, the one-statement claim and postings that lock accounts by code it was 1 / 2 / 13 / 2
# (plus 3 reads of the fleet) / 29; before a posting's writes went in one statement on
# PostgreSQL, 10 and 15; before the worker's speed and outcome were
# one statement each (metrics.ONE_STATEMENT_VENDORS), 12; the key and the entry were 3 while the
# view counted the queue early as well, and 2 until the key and the entry were one hand-written
# statement (apps/marketplace/job_sql.py); the claim and the start were 2 and the settlement 10
# until the claim started the job in the same statement (job_sql.worker_claim_and_job_start) and
# a completed job's speed and outcome became one statement without a transaction of its own; the
# creation (7) and the claim were two database calls until the API made them one
# (services.job_create_and_claim), and 8 until the queue's count stopped locking the model's
# catalogue row, and 7 until the queue's count came back with the job's insert
# (job_sql.job_insert_counting_queue); 6 and 7 until a posting locked, checked and wrote its
# accounts in one statement (ledger._post_if_sound). The first job of a roster's life also reads
# the roster and creates the accounts. Each step is one
# database call (views_v1 reads the key and the entry in one).
BUDGET = {"key and entry": 1, "create, hold, claim and start": 5, "complete and settle": 6,
          "claim and start (a queued job)": 1}


@pytest.fixture
def entry():
    catalogue_seed_builtin()
    return CatalogueModel.objects.get(name="gemma-3-270m")


def _worker(operator, entry, name):
    worker = worker_register(operator=operator, name=name, tiers=["open"])[0]
    Worker.objects.filter(id=worker.id).update(status="idle", channel_name=f"chan-{name}", models_served=[
        {"id": entry.served_model, "digest": entry.digests[0], "backend": "builtin"}])
    return worker


def _job_statements(alice, raw_key, entry) -> dict[str, list[str]]:
    spent = {}

    def step(name, call):
        with CaptureQueriesContext(connection) as queries:
            result = call()
        spent[name] = [q["sql"] for q in queries]
        return result

    body = json.dumps({"model": entry.name, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 8, "peer_tier": "open"}).encode()
    chat = parse_chat_request(body, default_tier="verified", default_max_tokens=32, max_tokens_limit=1024)
    step("key and entry", lambda: caller_and_entry(raw_key=raw_key, name=entry.name))
    job, claimed = step("create, hold, claim and start",
                        lambda: job_create_and_claim(user=alice, chat=chat, entry=entry))
    relay = JobRelay(job=job, entry=entry, route=chat.route, claimed=claimed)
    worker_id, _, model = relay._take_preclaimed()
    relay.worker_id, relay.model_id = worker_id, model["id"]  # as _try_assign does
    relay.assigned_at = relay.first_token_at = time.monotonic()
    relay.text_parts = ["Hello", " there"]
    step("complete and settle", lambda: relay._complete({"finish_reason": "stop", "model_digest": model["digest"]}))
    worker_release(worker_id=worker_id, job_id=job.id)
    # A job created while every worker was busy, or failing over: the relay's own claim.
    queued = JobRelay(job=job_create(user=alice, chat=chat, entry=entry), entry=entry, route=chat.route)
    worker_id, _, _ = step("claim and start (a queued job)", queued._claim_next)
    worker_release(worker_id=worker_id, job_id=queued.job.id)
    return spent


def test_a_job_stays_within_its_statement_budget(alice, bob, entry):
    credits_grant(user=alice, credits=1000)
    raw_key = api_key_issue(user=alice, name="budget")[1]
    for index in range(3):
        _worker(bob, entry, f"w{index}")
    _job_statements(alice, raw_key, entry)  # the first job also creates accounts and reads the roster
    spent = _job_statements(alice, raw_key, entry)
    for name, statements in spent.items():
        print(f"{name}: {len(statements)}\n  " + "\n  ".join(s[:160] for s in statements))
    assert {name: len(statements) for name, statements in spent.items()} == BUDGET


def test_the_job_paths_statements_are_prepared_after_a_few_runs(alice, bob, entry):
    """PEER_DB_PREPARED (on by default): a statement run PEER_DB_PREPARE_AFTER times on a
    connection is prepared there, so PostgreSQL stops parsing and planning it for every job."""
    from django.conf import settings

    assert connection.vendor == "postgresql"
    credits_grant(user=alice, credits=1000)
    raw_key = api_key_issue(user=alice, name="prepared")[1]
    _worker(bob, entry, "w0")
    for _ in range(settings.PEER_DB_PREPARE_AFTER + 1):
        caller_and_entry(raw_key=raw_key, name=entry.name)
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any("accounts_apikey" in sql for sql in prepared), prepared
