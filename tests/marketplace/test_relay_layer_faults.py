"""The relay when the channel layer refuses a message (a full inbox, Redis away), on the real
database: the job is refunded and the worker it claimed is not left busy."""

import json

import pytest
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull

from apps.credits.selectors import balance_get, held_get
from apps.credits.services import credits_grant
from apps.marketplace.demo import catalogue_seed_builtin
from apps.marketplace.models import Job
from apps.marketplace.relay import JobFailed, JobRelay
from apps.marketplace.requests import parse_chat_request
from apps.marketplace.services import job_create
from apps.workers.models import CatalogueModel, Worker
from apps.workers.services import worker_register

pytestmark = pytest.mark.django_db(transaction=True)


def _setup(alice, bob):
    catalogue_seed_builtin()
    entry = CatalogueModel.objects.get(name="gemma-3-270m")
    worker = worker_register(operator=bob, name="w", tiers=["open"])[0]
    Worker.objects.filter(id=worker.id).update(status="idle", channel_name="specific.test!abc", models_served=[
        {"id": entry.served_model, "digest": entry.digests[0], "backend": "builtin"}])
    credits_grant(user=alice, credits=100)
    body = json.dumps({"model": entry.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                       "peer_tier": "open"}).encode()
    chat = parse_chat_request(body, default_tier="open", default_max_tokens=8, max_tokens_limit=1024)
    return entry, worker, chat, job_create(user=alice, chat=chat, entry=entry)


async def test_an_assignment_the_layer_refuses_refunds_the_job_and_frees_the_worker(alice, bob, monkeypatch):
    entry, worker, chat, job = await database_sync_to_async(_setup)(alice, bob)
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
