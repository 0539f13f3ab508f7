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


def _subscriptions() -> int:
    """SUBSCRIBE and UNSUBSCRIBE commands the Redis server has run so far (all clients)."""
    stats = redis.Redis.from_url(settings.REDIS_URL).info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("subscribe", "unsubscribe"))


async def _leave(layer, channel) -> None:
    """What a relay or a consumer does when it goes: its pending receive is cancelled."""
    receiving = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(0)
    receiving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiving


async def test_new_channels_and_their_end_cost_redis_nothing_after_the_first():
    layer = _pubsub_layer()
    first = await layer.new_channel()  # subscribes this event loop's inbox
    before = _subscriptions()
    channels = [await layer.new_channel() for _ in range(20)]
    for channel in channels:
        await layer.send(channel, {"type": "job.frame", "n": channel})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["n"] == channel
        await _leave(layer, channel)
    assert _subscriptions() == before
    assert len(set(channels) | {first}) == 21 and all(c.split("!")[0] == first.split("!")[0] for c in channels)
    await layer.flush()


async def test_another_process_reaches_a_process_local_channel_through_its_inbox_in_order():
    here, there = _pubsub_layer(), _pubsub_layer()  # two node processes
    theirs, also_theirs = await there.new_channel(), await there.new_channel()
    for seq in range(20):
        await here.send(theirs, {"type": "agent.send", "seq": seq})
    await here.send(also_theirs, {"type": "agent.send", "seq": "other"})
    assert [(await asyncio.wait_for(there.receive(theirs), 5))["seq"] for _ in range(20)] == list(range(20))
    assert (await asyncio.wait_for(there.receive(also_theirs), 5))["seq"] == "other"
    await here.flush()
    await there.flush()


async def test_a_message_for_a_channel_that_has_gone_is_dropped_and_the_others_still_arrive():
    here, there = _pubsub_layer(), _pubsub_layer()
    gone, staying = await there.new_channel(), await there.new_channel()
    await _leave(there, gone)
    await here.send(gone, {"type": "job.frame", "n": 1})  # from another process: published, dropped there
    await there.send(gone, {"type": "job.frame", "n": 2})  # from its own: not even published
    await here.send(staying, {"type": "job.frame", "n": 3})
    assert (await asyncio.wait_for(there.receive(staying), 5))["n"] == 3
    assert gone not in there._get_layer().channels
    await here.flush()
    await there.flush()


async def test_after_a_flush_new_channels_get_a_new_inbox_that_works():
    here, there = _pubsub_layer(), _pubsub_layer()
    old = await there.new_channel()
    await there.flush()
    new = await there.new_channel()
    assert new.split("!")[0] != old.split("!")[0]
    await here.send(new, {"type": "job.frame", "n": 1})
    assert (await asyncio.wait_for(there.receive(new), 5))["n"] == 1
    await here.flush()
    await there.flush()


async def test_a_jobs_group_costs_redis_nothing_to_join_or_leave_and_reaches_members_in_every_process():
    here, there = _pubsub_layer(), _pubsub_layer()
    mine, left, theirs = await here.new_channel(), await here.new_channel(), await there.new_channel()
    await there.group_add("network-test", theirs)  # other groups: one subscription each, as before
    before = _subscriptions()
    for job in range(10):
        await here.group_add(f"job.{job}", mine)
        await here.group_add(f"job.{job}", left)
        await there.group_add(f"job.{job}", theirs)
        await here.group_discard(f"job.{job}", left)
        if job < 9:
            await here.group_discard(f"job.{job}", mine)
            await there.group_discard(f"job.{job}", theirs)
    assert _subscriptions() == before
    await there.group_send("job.9", {"type": "job.frame", "n": 1})  # a notice from another process
    await here.group_send("job.9", {"type": "job.frame", "n": 2})  # and from this one
    await here.group_send("job.3", {"type": "job.frame", "n": "nobody is in it now"})
    await here.group_send("network-test", {"type": "network.event", "n": 3})
    assert [(await asyncio.wait_for(here.receive(mine), 5))["n"] for _ in range(2)] == [1, 2]
    # (order is kept per sender and channel; these came three ways)
    assert sorted([(await asyncio.wait_for(there.receive(theirs), 5))["n"] for _ in range(3)]) == [1, 2, 3]
    received = [here.receive(left), here.receive(mine), there.receive(theirs)]
    done, pending = await asyncio.wait([asyncio.ensure_future(r) for r in received], timeout=0.5)
    assert not done  # nothing more: not for the member that left, nor from job.3
    for waiting in pending:
        waiting.cancel()
    await here.flush()
    await there.flush()


async def test_a_publication_the_inbox_cannot_read_is_dropped_and_delivery_goes_on():
    here, there = _pubsub_layer(), _pubsub_layer()
    theirs = await there.new_channel()
    redis.Redis.from_url(settings.REDIS_URL).publish(theirs.split("!")[0], b"\xc1 not msgpack")
    await here.send(theirs, {"type": "job.frame", "n": 1})
    assert (await asyncio.wait_for(there.receive(theirs), 5))["n"] == 1
    await here.flush()
    await there.flush()
