"""What the relay's job.assign tells the agent, on the real database: whether the client reads
the answer as it is made (`stream`), so a non-streamed job's pieces may come in batches."""

import json

import pytest
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull

from apps.credits.pricing import credits_to_micro
from apps.credits.selectors import balance_get, held_get
from apps.credits.services import credits_grant
from apps.marketplace.demo import catalogue_seed_builtin
from apps.marketplace.relay import JobFailed, JobRelay
from apps.marketplace.requests import parse_chat_request
from apps.marketplace.services import job_create
from apps.workers.models import CatalogueModel, Worker
from apps.workers.services import worker_register

pytestmark = pytest.mark.django_db(transaction=True)


def _job(alice, bob, stream: bool):
    catalogue_seed_builtin()
    entry = CatalogueModel.objects.get(name="gemma-3-270m")
    worker = worker_register(operator=bob, name="w", tiers=["open"])[0]
    Worker.objects.filter(id=worker.id).update(status="idle", channel_name="specific.test!abc", models_served=[
        {"id": entry.served_model, "digest": entry.digests[0], "backend": "builtin"}])
    credits_grant(user=alice, credits=100)
    body = json.dumps({"model": entry.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                       "peer_tier": "open", "stream": stream}).encode()
    chat = parse_chat_request(body, default_tier="open", default_max_tokens=8, max_tokens_limit=1024)
    return entry, chat, job_create(user=alice, chat=chat, entry=entry)


@pytest.mark.parametrize("stream", [True, False])
async def test_the_assignment_says_whether_the_client_streams(alice, bob, stream, monkeypatch):
    entry, chat, job = await database_sync_to_async(_job)(alice, bob, stream)
    sent = []

    async def capture_then_refuse(channel, message):
        sent.append(message)
        raise ChannelFull()  # ends the relay here: the job is refunded

    relay = JobRelay(job=job, entry=entry, route=chat.route)
    monkeypatch.setattr(relay.layer, "send", capture_then_refuse)  # the process's layer: undone after
    with pytest.raises(JobFailed):
        await relay.start()
    await relay.close()
    assign = sent[0]["frame"]
    assert assign["type"] == "job.assign" and assign["job_id"] == str(job.id)
    assert assign["stream"] is stream
    assert "stream" not in assign["params"]  # not committed to: the answer is the same either way
    assert await database_sync_to_async(balance_get)(user=alice) == credits_to_micro(100)
    assert await database_sync_to_async(held_get)(user=alice) == 0
