"""The job path's hand-written statements (apps/marketplace/job_sql.py, peercycles/sql.py) and the
ORM's way SQLite takes: each test runs both on PostgreSQL, and both must leave the same rows,
the same ledger and the same answers."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.accounts.models import ApiKey
from apps.accounts.services import api_key_issue
from apps.credits.selectors import balance_get, held_get
from apps.credits.services import credits_grant
from apps.marketplace import job_sql
from apps.marketplace.demo import catalogue_seed_builtin
from apps.marketplace.errors import ApiError
from apps.marketplace.models import Job
from apps.marketplace.requests import parse_chat_request
from apps.marketplace.services import caller_and_entry, job_complete, job_create, job_fail, job_start
from apps.workers.models import CatalogueModel, Worker
from apps.workers.services import worker_register

pytestmark = pytest.mark.django_db
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say \"hi\" — ünïcode."}]


@pytest.fixture(params=["hand-written", "orm"])
def way(request, monkeypatch):
    if request.param == "orm":
        monkeypatch.setattr(job_sql, "HAND_WRITTEN_VENDORS", set())
    return request.param


@pytest.fixture
def entry():
    catalogue_seed_builtin()
    return CatalogueModel.objects.get(name="gemma-3-270m")


def _chat(entry, **extra) -> object:
    body = {"model": entry.name, "messages": MESSAGES, "max_tokens": 8, "peer_tier": "open", **extra}
    return parse_chat_request(json.dumps(body).encode(), default_tier="open", default_max_tokens=32,
                              max_tokens_limit=1024)


def test_the_key_and_the_entry(way, alice, entry):
    raw_key = api_key_issue(user=alice, name="k")[1]
    user, found = caller_and_entry(raw_key=raw_key, name=entry.name)
    assert user.pk == alice.pk and user.username == alice.username  # other fields load on access
    assert found == entry and found.digests == entry.digests and found.context_length == entry.context_length
    assert ApiKey.objects.get(user=alice).last_used_at is not None
    with pytest.raises(ApiError) as missing:
        caller_and_entry(raw_key=raw_key, name="no-such-model")
    assert missing.value.status == 404 and missing.value.code == "model_not_found"
    CatalogueModel.objects.filter(id=entry.id).update(active=False)
    with pytest.raises(ApiError):
        caller_and_entry(raw_key=raw_key, name=entry.name)


def test_a_bad_key_is_nobody_whatever_the_model(way, alice, entry):
    raw_key = api_key_issue(user=alice, name="k")[1]
    assert caller_and_entry(raw_key="pc_" + "0" * 40, name="no-such-model") == (None, None)
    assert caller_and_entry(raw_key="sk-not-ours", name=entry.name) == (None, None)
    get_user_model().objects.filter(id=alice.id).update(is_active=False)
    assert caller_and_entry(raw_key=raw_key, name=entry.name) == (None, None)
    get_user_model().objects.filter(id=alice.id).update(is_active=True)
    ApiKey.objects.filter(user=alice).update(revoked_at=timezone.now())
    assert caller_and_entry(raw_key=raw_key, name=entry.name) == (None, None)


def _running_job(alice, bob, entry) -> tuple[Job, Worker]:
    credits_grant(user=alice, credits=1000)
    worker = worker_register(operator=bob, name="w", tiers=["open"])[0]
    job = job_create(user=alice, chat=_chat(entry, seed=7, temperature=0.5), entry=entry)
    assert job_start(job_id=job.id, worker_id=worker.id, model_digest=entry.digests[0], price_per_token=10)
    return job, worker


def test_a_job_from_creation_to_settlement_reads_back_as_written(way, alice, bob, entry):
    job, worker = _running_job(alice, bob, entry)
    stored = Job.objects.get(id=job.id)
    assert stored.messages == MESSAGES and stored.params == job.params and stored.seed == 7
    assert stored.hold_amount == job.hold_amount > 0 and stored.created_at == job.created_at
    assert (stored.status, stored.worker_id, stored.price_per_token) == ("running", worker.id, 10)
    settled = job_complete(job_id=job.id, output_text="Hi — there", finish_reason="stop",
                           model_digest=entry.digests[0], entry=entry)
    assert settled.worker.pk == worker.pk and settled.user.pk == alice.pk
    again = Job.objects.get(id=job.id)
    assert (again.status, again.hold_state, again.output_text) == ("completed", "captured", "Hi — there")
    assert again.commitment == settled.commitment and again.commitment["hash"]
    assert again.charged_amount == settled.charged_amount > 0 and again.finished_at == settled.finished_at
    assert balance_get(user=alice) == 1000 * 10_000 - again.charged_amount
    # settling twice is a no-op that returns the settled job
    assert job_complete(job_id=job.id, output_text="other", finish_reason="stop",
                        model_digest=entry.digests[0], entry=entry).charged_amount == again.charged_amount


def test_a_failed_job_is_refunded_whole_and_starts_no_more(way, alice, bob, entry):
    job, worker = _running_job(alice, bob, entry)
    failed = job_fail(job_id=job.id, code="worker_failed", message="x" * 600)
    stored = Job.objects.get(id=job.id)
    assert (stored.status, stored.hold_state, stored.charged_amount) == ("failed", "released", 0)
    assert stored.error_message == failed.error_message == "x" * 500
    assert balance_get(user=alice) == 1000 * 10_000
    assert not job_start(job_id=job.id, worker_id=worker.id, model_digest=entry.digests[0], price_per_token=10)


def test_a_start_above_the_jobs_price_ceiling_is_refused(way, alice, bob, entry):
    job, worker = _running_job(alice, bob, entry)
    assert not job_start(job_id=job.id, worker_id=worker.id, model_digest=entry.digests[0],
                         price_per_token=job.price_ceiling + 1)
    assert Job.objects.get(id=job.id).price_per_token == 10


def test_settling_a_job_that_does_not_exist_raises(way):
    with pytest.raises(Job.DoesNotExist):
        job_fail(job_id="00000000-0000-4000-8000-000000000000", code="x", message="y")


def _idle_workers(bob, entry, count: int) -> list[Worker]:
    from apps.workers.roster import roster_forget

    workers = [worker_register(operator=bob, name=f"idle-{n}", tiers=["open"])[0] for n in range(count)]
    Worker.objects.filter(id__in=[w.id for w in workers]).update(
        status="idle", channel_name="specific.test!abc", last_seen_at=timezone.now(),
        models_served=[{"id": entry.served_model, "digest": entry.digests[0], "backend": "builtin"}])
    roster_forget()
    return workers


def test_a_claim_starts_the_job_on_the_best_idle_worker_at_its_price(way, alice, bob, entry):
    from apps.marketplace.services import job_claim_worker
    from apps.workers.services import workers_claimable

    credits_grant(user=alice, credits=1000)
    workers = _idle_workers(bob, entry, 2)
    jobs = [job_create(user=alice, chat=_chat(entry), entry=entry) for _ in range(3)]
    ranked = workers_claimable(entry=entry, tier="open", route=None, price_ceiling=jobs[0].price_ceiling,
                               exclude=set())
    assert [worker_id for worker_id, _, _ in ranked] and {w for w, _, _ in ranked} == {str(w.id) for w in workers}
    claims = [job_claim_worker(job=job, entry=entry, route=None, exclude=set()) for job in jobs]
    assert claims[2] is None  # both workers are busy now
    for job, (worker_id, channel, model, started), (best_id, best_model, price) in zip(jobs, claims, ranked):
        assert (str(worker_id), channel, model, started) == (best_id, "specific.test!abc", best_model, True)
        stored = Job.objects.get(id=job.id)
        assert (stored.status, str(stored.worker_id), stored.price_per_token, stored.model_digest) == (
            "running", best_id, price, entry.digests[0])
        assert stored.started_at is not None
        assert Worker.objects.filter(id=worker_id, status="busy", current_job_id=job.id).exists()
    assert Job.objects.get(id=jobs[2].id).status == "queued"


def test_a_claim_skips_excluded_workers_and_workers_that_stopped_serving_the_model(way, alice, bob, entry):
    from apps.marketplace.services import job_claim_worker

    credits_grant(user=alice, credits=1000)
    first, second, third = _idle_workers(bob, entry, 3)
    job = job_create(user=alice, chat=_chat(entry), entry=entry)
    Worker.objects.filter(id=second.id).update(models_served=[{"id": "other", "digest": "sha256:" + "0" * 64}])
    worker_id, _, _, started = job_claim_worker(job=job, entry=entry, route=None, exclude={str(first.id)})
    assert (str(worker_id), started) == (str(third.id), True)
    assert Worker.objects.get(id=first.id).status == Worker.objects.get(id=second.id).status == "idle"


def test_a_claim_for_a_job_settled_meanwhile_does_not_start_it_and_leaves_the_worker_to_release(
        way, alice, bob, entry):
    from apps.marketplace.services import job_claim_worker

    credits_grant(user=alice, credits=1000)
    (worker,) = _idle_workers(bob, entry, 1)
    job = job_create(user=alice, chat=_chat(entry), entry=entry)
    job_fail(job_id=job.id, code="job_timeout", message="refunded by the reaper")
    worker_id, _, _, started = job_claim_worker(job=job, entry=entry, route=None, exclude=set())
    assert (str(worker_id), started) == (str(worker.id), False)
    stored = Job.objects.get(id=job.id)
    assert (stored.status, stored.worker_id, stored.hold_state) == ("failed", None, "released")
    assert Worker.objects.filter(id=worker.id, status="busy", current_job_id=job.id).exists()
    assert balance_get(user=alice) == 1000 * 10_000


def test_a_job_created_with_a_claim_starts_on_the_best_idle_worker_in_the_same_call(way, alice, bob, entry):
    from apps.marketplace.services import job_create_and_claim

    credits_grant(user=alice, credits=1000)
    (worker,) = _idle_workers(bob, entry, 1)
    job, claimed = job_create_and_claim(user=alice, chat=_chat(entry), entry=entry)
    assert claimed is not None and str(claimed[0]) == str(worker.id) and claimed[1] == "specific.test!abc"
    assert claimed[2]["digest"] == entry.digests[0]
    stored = Job.objects.get(id=job.id)
    assert (stored.status, stored.worker_id, stored.hold_state) == ("running", worker.id, "held")
    assert Worker.objects.filter(id=worker.id, status="busy", current_job_id=job.id).exists()
    # The only worker is busy now: the next job is created queued, for the relay to route.
    second, none = job_create_and_claim(user=alice, chat=_chat(entry), entry=entry)
    assert none is None and Job.objects.get(id=second.id).status == "queued"
    assert balance_get(user=alice) == 1000 * 10_000 - job.hold_amount - second.hold_amount


def test_a_job_refused_for_want_of_credits_claims_no_worker(way, alice, bob, entry):
    from apps.marketplace.services import InsufficientCredits, job_create_and_claim

    credits_grant(user=alice, credits=1)
    (worker,) = _idle_workers(bob, entry, 1)
    with pytest.raises(InsufficientCredits):
        job_create_and_claim(user=alice, chat=_chat(entry), entry=entry)
    assert not Job.objects.exists()
    assert Worker.objects.filter(id=worker.id, status="idle", current_job_id=None).exists()
    assert balance_get(user=alice) == 1 * 10_000


def test_the_queue_refuses_the_job_past_its_limit_and_keeps_nothing_of_it(way, alice, entry, settings):
    """The count of waiting jobs is read with the job's insert (one statement on PostgreSQL): it
    must not count the job itself, and a refused job must leave no row and no hold."""
    settings.PEER_QUEUE_LIMIT = 3
    credits_grant(user=alice, credits=1000)
    chat = _chat(entry)
    for _ in range(3):  # the third finds two waiting: under the limit
        job_create(user=alice, chat=chat, entry=entry)
    held, credits = held_get(user=alice), balance_get(user=alice)
    with pytest.raises(ApiError) as full:
        job_create(user=alice, chat=chat, entry=entry)
    assert full.value.status == 429 and full.value.code == "queue_full"
    assert Job.objects.filter(user=alice).count() == 3
    assert (held_get(user=alice), balance_get(user=alice)) == (held, credits)
    # A job of another tier waits in a queue of its own.
    job_create(user=alice, chat=_chat(entry, peer_tier="verified"), entry=entry)
