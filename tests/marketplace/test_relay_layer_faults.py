"""The relay when the channel layer refuses a message (a full inbox, Redis away), on the real
database: the job is refunded and the worker it claimed is not left busy."""

import pytest
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull

from apps.credits.selectors import balance_get, held_get
from apps.marketplace.models import Job
from apps.marketplace.relay import JobFailed, JobRelay
from apps.workers.models import Worker

from .relay_support import job_for_relay

pytestmark = pytest.mark.django_db(transaction=True)


async def test_an_assignment_the_layer_refuses_refunds_the_job_and_frees_the_worker(alice, bob, monkeypatch):
    entry, worker, chat, job = await database_sync_to_async(job_for_relay)(alice, bob)
    before = await database_sync_to_async(balance_get)(user=alice) + await database_sync_to_async(held_get)(user=alice)
    relay = JobRelay(job=job, entry=entry, route=chat.route)

    async def full(channel, message):
        raise ChannelFull()

    # Every send (the assignment and the cancel after it), on the process's layer: undone after.
    monkeypatch.setattr(relay.layer, "send", full)
    with pytest.raises(JobFailed) as failed:
        await relay.start()
    await relay.close()
    assert failed.value.code == "node_unavailable"
    job = await Job.objects.aget(id=job.id)
    assert (job.status, job.hold_state) == ("failed", "released")
    assert (await Worker.objects.aget(id=worker.id)).status == "idle"
    assert await database_sync_to_async(balance_get)(user=alice) == before


async def test_a_worker_claimed_with_the_job_is_let_go_when_the_layer_fails_before_routing(alice, bob, monkeypatch):
    entry, worker, chat, job, claimed = await database_sync_to_async(job_for_relay)(alice, bob, claim=True)
    assert claimed is not None and (await Worker.objects.aget(id=worker.id)).status == "busy"
    relay = JobRelay(job=job, entry=entry, route=chat.route, claimed=claimed)

    async def redis_away():
        raise OSError("connection refused")

    monkeypatch.setattr(relay.layer, "new_channel", redis_away)
    with pytest.raises(JobFailed) as failed:
        await relay.start()
    await relay.close()
    assert failed.value.code == "node_unavailable"
    job = await Job.objects.aget(id=job.id)
    assert (job.status, job.hold_state) == ("failed", "released")
    assert (await Worker.objects.aget(id=worker.id)).status == "idle"
    assert await database_sync_to_async(held_get)(user=alice) == 0


async def test_the_worker_claimed_with_the_job_is_assigned_first_without_another_claim(alice, bob, monkeypatch):
    entry, worker, chat, job, claimed = await database_sync_to_async(job_for_relay)(alice, bob, claim=True)
    relay = JobRelay(job=job, entry=entry, route=chat.route, claimed=claimed)
    sent = []

    async def capture_then_refuse(channel, message):
        sent.append((channel, message))
        raise ChannelFull()

    def no_claim():
        raise AssertionError("claimed again")

    monkeypatch.setattr(relay.layer, "send", capture_then_refuse)
    monkeypatch.setattr(relay, "_claim_next", no_claim)
    with pytest.raises(JobFailed):
        await relay.start()
    await relay.close()
    channel, message = sent[0]
    assert channel == "specific.test!abc" and message["frame"]["type"] == "job.assign"
    assert relay.tried == {str(worker.id)}
    # The assignment never left: the relay let the worker go and refunded the job.
    assert (await Worker.objects.aget(id=worker.id)).status == "idle"
    assert (await Job.objects.aget(id=job.id)).hold_state == "released"
