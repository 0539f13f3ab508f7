"""The node's channel layer (peercycles/channel_layer.py) on the real Redis: its one-trip send
keeps channels_redis's semantics (delivery order, process-local channels, capacity, expiry)."""

import asyncio

import pytest
from channels.exceptions import ChannelFull
from django.conf import settings

from peercycles.channel_layer import OneTripRedisChannelLayer


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
