"""What the relay's job.assign tells the agent, on the real database: whether the client reads
the answer as it is made (`stream`), so a non-streamed job's pieces may come in batches."""

import pytest
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull

from apps.credits.pricing import credits_to_micro
from apps.credits.selectors import balance_get, held_get
from apps.marketplace.relay import JobFailed, JobRelay

from .relay_support import job_for_relay

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("stream", [True, False])
async def test_the_assignment_says_whether_the_client_streams(alice, bob, stream, monkeypatch):
    entry, _, chat, job = await database_sync_to_async(job_for_relay)(alice, bob, stream=stream)
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
