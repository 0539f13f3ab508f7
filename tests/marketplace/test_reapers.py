"""The Celery reapers: money held by a job whose relay died comes back, silent workers go offline."""

import pytest
from django.utils import timezone

from apps.credits.selectors import balance_get, held_get
from apps.credits.services import credits_grant
from apps.marketplace.demo import catalogue_seed_builtin
from apps.marketplace.models import Job
from apps.marketplace.requests import parse_chat_request
from apps.marketplace.services import job_create
from apps.marketplace.tasks import jobs_reap_stale_task
from apps.workers.models import CatalogueModel, Worker
from apps.workers.services import worker_claim, worker_register
from apps.workers.tasks import workers_reap_silent_task

pytestmark = pytest.mark.django_db


def _chat(**overrides):
    body = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "hi"}], **overrides}
    import json
    return parse_chat_request(json.dumps(body).encode(), default_tier="verified", default_max_tokens=32,
                              max_tokens_limit=1024)


@pytest.fixture
def entry():
    catalogue_seed_builtin()
    return CatalogueModel.objects.get(name="gemma-3-270m")


def test_a_job_past_its_deadline_is_refunded_by_the_reaper_exactly_once(alice, entry):
    credits_grant(user=alice, credits=100)
    before = balance_get(user=alice)
    job = job_create(user=alice, chat=_chat(), entry=entry)
    assert held_get(user=alice) == job.hold_amount > 0
    Job.objects.filter(id=job.id).update(deadline_at=timezone.now() - timezone.timedelta(seconds=1))
    assert jobs_reap_stale_task.apply().get() == 1
    assert jobs_reap_stale_task.apply().get() == 0
    job.refresh_from_db()
    assert (job.status, job.hold_state, job.error_code) == ("failed", "released", "timeout")
    assert balance_get(user=alice) == before and held_get(user=alice) == 0


def test_a_job_within_its_deadline_is_left_alone(alice, entry):
    credits_grant(user=alice, credits=100)
    job = job_create(user=alice, chat=_chat(), entry=entry)
    assert jobs_reap_stale_task.apply().get() == 0
    job.refresh_from_db()
    assert job.hold_state == "held"


def test_a_silent_worker_goes_offline_and_its_job_is_refunded(alice, bob, entry, settings):
    credits_grant(user=alice, credits=100)
    worker, _ = worker_register(operator=bob, name="quiet", tiers=["verified"])
    Worker.objects.filter(id=worker.id).update(
        status="idle", channel_name="specific.x!y",
        last_seen_at=timezone.now() - timezone.timedelta(seconds=settings.PEER_WORKER_SILENCE_LIMIT + 5))
    job = job_create(user=alice, chat=_chat(), entry=entry)
    assert worker_claim(worker_id=worker.id, job_id=job.id)
    workers_reap_silent_task.apply()
    assert Worker.objects.get(id=worker.id).status == "offline"
    job.refresh_from_db()
    assert job.hold_state == "released" and job.error_code == "worker_lost"
    assert held_get(user=alice) == 0


def test_a_job_the_credits_cannot_cover_writes_nothing(mallory, entry):
    from apps.marketplace.services import InsufficientCredits

    with pytest.raises(InsufficientCredits) as caught:
        job_create(user=mallory, chat=_chat(), entry=entry)
    assert caught.value.available == 0 and caught.value.price > 0
    assert not Job.objects.exists()


def test_a_prompt_longer_than_the_context_is_a_400_before_any_hold(alice, entry):
    from apps.marketplace.errors import ApiError

    credits_grant(user=alice, credits=100)
    with pytest.raises(ApiError) as caught:
        job_create(user=alice, chat=_chat(messages=[{"role": "user", "content": "word " * 3000}]), entry=entry)
    assert caught.value.status == 400 and caught.value.code == "context_length_exceeded"
    assert held_get(user=alice) == 0 and not Job.objects.exists()
