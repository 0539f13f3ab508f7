"""The node's channel layers (peercycles/channel_layer.py) on the real Redis: the list layer's
one-trip send keeps channels_redis's semantics (delivery order, process-local channels, capacity,
expiry); the pub/sub layer delivers to this process's channels without Redis, and to other
processes' channels and to groups through it."""

import asyncio

import pytest
import redis
from channels.exceptions import ChannelFull
from django.conf import settings

from peercycles.channel_layer import LocalFirstPubSubChannelLayer, OneTripRedisChannelLayer


def _layer(**config):
    return OneTripRedisChannelLayer(hosts=[settings.REDIS_URL], prefix="peercycles-layer-test", **config)


async def test_messages_to_a_process_local_channel_arrive_whole_and_in_order():
    layer = _layer()
    channel = await layer.new_channel()
    for seq in range(50):
        await layer.send(channel, {"type": "job.frame", "seq": seq, "text": f"token {seq}"})
    received = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(50)]
    assert [m["seq"] for m in received] == list(range(50)) and received[7]["text"] == "token 7"
    await layer.flush()


async def test_a_general_channel_and_a_group_send_mix_with_it():
    layer = _layer()
    await layer.send("agent-test", {"type": "agent.send", "n": 1})
    assert (await asyncio.wait_for(layer.receive("agent-test"), 5))["n"] == 1
    channel = await layer.new_channel()
    await layer.group_add("job.test", channel)
    await layer.send(channel, {"type": "job.frame", "n": 1})
    await layer.group_send("job.test", {"type": "job.frame", "n": 2})
    assert [(await asyncio.wait_for(layer.receive(channel), 5))["n"] for _ in range(2)] == [1, 2]
    await layer.flush()


async def test_a_full_channel_refuses_the_message_and_an_expired_one_makes_room():
    layer = _layer(capacity=3, expiry=1)
    channel = await layer.new_channel()
    for n in range(3):
        await layer.send(channel, {"type": "x", "n": n})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "x", "n": 3})
    await asyncio.sleep(2.1)  # past the expiry: the three old messages are dropped on the next send
    await layer.send(channel, {"type": "x", "n": 4})
    assert (await asyncio.wait_for(layer.receive(channel), 5))["n"] == 4
    await layer.flush()


def _publishes() -> int:
    """PUBLISH commands the Redis server has run so far (all clients)."""
    stats = redis.Redis.from_url(settings.REDIS_URL).info("commandstats")
    return stats.get("cmdstat_publish", {}).get("calls", 0)


def _pubsub_layer():
    return LocalFirstPubSubChannelLayer(hosts=[settings.REDIS_URL], prefix="peercycles-layer-test")


async def test_the_pubsub_layer_delivers_to_a_channel_of_this_process_without_redis_in_order_as_copies():
    layer = _pubsub_layer()
    channel = await layer.new_channel()
    before = _publishes()
    sent = [{"type": "job.frame", "seq": seq, "frame": {"text": f"token {seq}"}} for seq in range(50)]
    for message in sent:
        await layer.send(channel, message)
    sent[3]["frame"]["text"] = "changed after sending"
    received = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(50)]
    assert _publishes() == before
    assert [m["seq"] for m in received] == list(range(50))
    assert received[3]["frame"]["text"] == "token 3"  # a copy, as through Redis
    await layer.flush()


async def test_the_pubsub_layer_sends_to_another_process_and_to_groups_through_redis():
    here, there = _pubsub_layer(), _pubsub_layer()  # two node processes
    theirs = await there.new_channel()
    mine = await here.new_channel()
    await here.group_add("job.test", mine)
    before = _publishes()
    await here.send(theirs, {"type": "agent.send", "n": 1})
    assert (await asyncio.wait_for(there.receive(theirs), 5))["n"] == 1
    await here.send(mine, {"type": "job.frame", "n": 2})  # local
    await there.group_send("job.test", {"type": "job.frame", "n": 3})
    assert [(await asyncio.wait_for(here.receive(mine), 5))["n"] for _ in range(2)] == [2, 3]
    assert _publishes() - before == 2
    await here.flush()
    await there.flush()
