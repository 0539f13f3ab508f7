"""Admission per node process: at most PEER_NODE_JOB_LIMIT jobs relayed at once, the rest wait
their turn in order, holding nothing, or are told 503 node_busy with Retry-After."""

import asyncio
import gc
import json

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient

from apps.accounts.services import api_key_issue
from apps.credits.selectors import balance_get
from apps.credits.services import credits_grant
from apps.marketplace.admission import Gate, NodeBusy, job_admit
from apps.marketplace.demo import catalogue_seed_builtin
from apps.marketplace.models import Job


async def _enter(gate, limit=2, wait_limit=10, timeout=5.0):
    return await gate.enter(limit=limit, wait_limit=wait_limit, timeout=timeout)


async def test_up_to_the_limit_enter_at_once_and_the_rest_in_arrival_order():
    gate = Gate(asyncio.get_running_loop())
    first, second = await _enter(gate), await _enter(gate)
    order = []

    async def wait(name):
        slot = await _enter(gate)
        order.append(name)
        return slot

    third, fourth = asyncio.ensure_future(wait("third")), asyncio.ensure_future(wait("fourth"))
    await asyncio.sleep(0.05)
    assert order == [] and gate.running == 2 and len(gate.waiting) == 2
    first.release()
    first.release()  # once only: a second release frees nothing more
    await asyncio.sleep(0.05)
    assert order == ["third"] and gate.running == 2
    second.release()
    await asyncio.sleep(0.05)
    assert order == ["third", "fourth"]
    (await third).release()
    (await fourth).release()
    assert gate.running == 0 and not gate.waiting


async def test_a_full_wait_is_refused_at_once_and_a_long_one_after_its_timeout():
    gate = Gate(asyncio.get_running_loop())
    held = await _enter(gate, limit=1)
    with pytest.raises(NodeBusy) as full:
        await _enter(gate, limit=1, wait_limit=0)
    assert full.value.status == 503 and full.value.code == "node_busy"
    assert int(full.value.headers["Retry-After"]) > 0
    with pytest.raises(NodeBusy):
        await _enter(gate, limit=1, timeout=0.05)
    assert not gate.waiting  # the one that gave up left the line
    held.release()
    assert gate.running == 0


async def test_a_request_cancelled_while_it_waits_takes_no_place():
    gate = Gate(asyncio.get_running_loop())
    held = await _enter(gate, limit=1)
    waiter = asyncio.ensure_future(_enter(gate, limit=1))
    await asyncio.sleep(0.02)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not gate.waiting
    held.release()
    assert gate.running == 0


def test_a_place_handed_to_a_request_as_it_gives_up_goes_to_the_next():
    loop = asyncio.new_event_loop()
    gate = Gate(loop)
    gate.running = 1
    leaving, staying = loop.create_future(), loop.create_future()
    gate.waiting.extend([leaving, staying])
    gate.leave()  # hands the place to `leaving`...
    assert leaving.result() is None and gate.running == 1
    gate._give_up(leaving)  # ...which timed out at that very moment: the place passes on
    assert staying.done() and gate.running == 1
    loop.close()


async def test_a_place_whose_holder_is_dropped_unused_is_freed():
    gate = Gate(asyncio.get_running_loop())

    class Body:  # a stream's body that the server never started (the client left first)
        pass

    body = Body()
    (await _enter(gate, limit=1)).release_with(body)
    assert gate.running == 1
    del body
    gc.collect()
    assert gate.running == 0


pytestmark_db = pytest.mark.django_db(transaction=True)


@pytest.fixture
def busy_node(settings):
    settings.PEER_NODE_JOB_LIMIT = 1
    settings.PEER_QUEUE_TIMEOUT = 0.3
    catalogue_seed_builtin()


def _chat_body() -> str:
    return json.dumps({"model": "gemma-3-270m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                       "peer_tier": "open"})


@pytestmark_db
async def test_a_request_past_the_limit_gets_503_node_busy_and_nothing_is_held(alice, busy_node):
    key = (await database_sync_to_async(api_key_issue)(user=alice))[1]
    await database_sync_to_async(credits_grant)(user=alice, credits=100)
    before = await database_sync_to_async(balance_get)(user=alice)
    held = await job_admit()  # another request of this process holds the only place
    response = await AsyncClient().post("/v1/chat/completions", _chat_body(), content_type="application/json",
                                        headers={"authorization": f"Bearer {key}"})
    held.release()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "node_busy" and int(response["Retry-After"]) > 0
    assert await Job.objects.filter(user=alice).acount() == 0
    assert await database_sync_to_async(balance_get)(user=alice) == before


@pytestmark_db
async def test_a_waiting_request_goes_on_when_the_place_is_freed(alice, busy_node, settings):
    settings.PEER_QUEUE_TIMEOUT = 5.0
    key = (await database_sync_to_async(api_key_issue)(user=alice))[1]
    await database_sync_to_async(credits_grant)(user=alice, credits=100)
    held = await job_admit()
    request = asyncio.ensure_future(AsyncClient().post(
        "/v1/chat/completions", _chat_body(), content_type="application/json",
        headers={"authorization": f"Bearer {key}"}))
    await asyncio.sleep(0.3)
    assert not request.done()
    held.release()
    response = await request
    # Past admission it met the market: no worker serves the open tier here, said at once.
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_workers"
    job = await Job.objects.aget(user=alice)
    assert (job.status, job.hold_state) == ("failed", "released")
