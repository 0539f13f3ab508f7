"""The Redis channel layers: the list layer with `send` in one round trip, and the pub/sub layer
with a send to a channel of this process delivered without Redis.

The list layer: channels_redis's `send` makes four round trips per message (drop expired messages, count them,
add, set the expiry), and every token of every stream is one `send` from the worker's consumer to
its relay (docs/benchmarks.md). This does the same four steps in one Lua script, on the same
keys, with the same scores, capacity rule and message format, so it mixes with the library's own
`receive` and `group_send` (and with nodes still running the library's `send`).
"""

import asyncio
import itertools
import logging
import time
import uuid

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

# KEYS[1] the channel's sorted set; ARGV: message, score (now), drop scores up to this, capacity,
# expiry. Returns 1 when the channel is full (nothing added), else 0.
_SEND = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[3])
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') >= tonumber(ARGV[4]) then
    return 1
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 0
"""


class OneTripRedisChannelLayer(RedisChannelLayer):
    async def send(self, channel, message):
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        key_name = channel
        if "!" in channel:  # a process-local channel: its process's set, the full name in the message
            message = {**message, "__asgi_channel__": channel}
            key_name = self.non_local_name(channel)
            index = self.consistent_hash(channel)
        else:
            index = next(self._send_index_generator)
        now = time.time()
        full = await self.connection(index).eval(
            _SEND, 1, self.prefix + key_name, self.serialize(message), now, int(now) - int(self.expiry),
            self.get_capacity(channel), int(self.expiry))
        if full:
            raise ChannelFull()


class LocalFirstPubSubChannelLayer(RedisPubSubChannelLayer):
    """channels_redis's pub/sub layer, with a message for a channel of this process delivered
    into that channel's queue here instead of through Redis, and new channels that cost Redis
    nothing.

    A job's frames go from the worker's consumer to the job's relay; with one node process (and
    with several, whenever the agent and the client reached the same one) both are in this
    process, and each frame was a PUBLISH, a reply, and a read of the same bytes back from the
    process's subscription: 12% of the node's CPU at 16 clients (docs/benchmarks.md). The message
    is still serialized, so the receiver gets a copy, as through Redis. What the pub/sub layer
    promises is unchanged: frames from one sender to one channel stay in order (all of them take
    the same way), and other processes' channels, and groups, still go through Redis.

    Process-local channels: the library subscribes every new channel in Redis and unsubscribes
    it when its receiver leaves, two commands for each relay and agent link (with the group a
    relay joins, 18% of the event loop's busy time at 16 clients). Here each event loop
    subscribes one inbox, once; a new channel is `<inbox>!<id>`, a queue of this process; a
    message for it from another process is published to the inbox with the channel's name
    inside (as channels_redis's list layer does for its process-local channels) and put into
    that queue here. A message for a channel that has gone is dropped, as Redis drops a
    publication nobody is subscribed to.

    Broadcast groups (BROADCAST_GROUP_PREFIXES: a job's group, which its relay joins and leaves
    and which hears only the rare notice of a lost worker): membership is kept in this process,
    at no Redis cost; a message to such a group is published once to a channel every process
    subscribes to, and each process hands it to its own members.
    """

    async def new_channel(self, prefix="specific."):
        layer = self._get_layer()
        inbox = await self._inbox(layer, prefix)
        # Unique under the inbox, itself unique: a count is enough (uuid4 was 2% of the event loop).
        channel = f"{inbox}!{next(_numbers)}"
        layer.channels[channel] = asyncio.Queue()
        return channel

    async def send(self, channel, message):
        layer = self._get_layer()
        # The library keeps a queue per channel subscribed in this process (for this event loop).
        queue = layer.channels.get(channel)
        if queue is not None:
            queue.put_nowait(self.serialize(message))
        elif "!" in channel:
            inbox = channel.split("!", 1)[0]
            if inbox != getattr(layer, "peer_inbox", None):  # not one of ours that has gone
                await layer.send(inbox, {**message, _TARGET: channel})
        else:
            await layer.send(channel, message)

    async def receive(self, channel):
        layer = self._get_layer()
        if "!" not in channel:
            return await layer.receive(channel)
        queue = layer.channels.setdefault(channel, asyncio.Queue())
        try:
            message = await queue.get()
        except (asyncio.CancelledError, asyncio.TimeoutError, GeneratorExit):
            # The receiver is leaving (as the library assumes of a cancelled receive): the
            # channel goes with it, with no UNSUBSCRIBE to send.
            layer.channels.pop(channel, None)
            raise
        return message if isinstance(message, dict) else self.deserialize(message)

    async def group_add(self, group, channel):
        layer = self._get_layer()
        if not group.startswith(BROADCAST_GROUP_PREFIXES):
            return await layer.group_add(group, channel)
        await self._inbox(layer, "specific.")  # subscribes the broadcast channel with the inbox
        layer.peer_groups.setdefault(group, set()).add(channel)

    async def group_discard(self, group, channel):
        layer = self._get_layer()
        if not group.startswith(BROADCAST_GROUP_PREFIXES):
            return await layer.group_discard(group, channel)
        groups = getattr(layer, "peer_groups", {})  # none before this loop's first new channel
        groups.get(group, set()).discard(channel)
        if not groups.get(group):
            groups.pop(group, None)

    async def group_send(self, group, message):
        layer = self._get_layer()
        if not group.startswith(BROADCAST_GROUP_PREFIXES):
            return await layer.group_send(group, message)
        await layer.send(f"{layer.prefix}{BROADCAST_CHANNEL}", {**message, _GROUP: group})

    async def flush(self):
        layer = self._get_layer()
        for pump in getattr(layer, "peer_pumps", ()):
            pump.cancel()
        layer.peer_pumps, layer.peer_groups, layer.peer_inbox = [], {}, None
        await layer.flush()

    async def _inbox(self, layer, prefix: str) -> str:
        """This event loop's inbox, subscribed in Redis on first use (again after a flush, which
        forgets every subscription), with the task that hands what arrives on it to its channels."""
        inbox = getattr(layer, "peer_inbox", None)
        if inbox is not None and inbox in layer.channels:
            return inbox
        if getattr(layer, "peer_inbox_lock", None) is None:
            layer.peer_inbox_lock = asyncio.Lock()
        async with layer.peer_inbox_lock:
            inbox = getattr(layer, "peer_inbox", None)
            if inbox is None or inbox not in layer.channels:
                for pump in getattr(layer, "peer_pumps", ()):
                    pump.cancel()
                inbox = f"{layer.prefix}{prefix}inbox.{uuid.uuid4().hex}"
                layer.peer_pumps = []
                for name in (inbox, f"{layer.prefix}{BROADCAST_CHANNEL}"):
                    await layer._subscribe_to_channel(name)  # noqa: SLF001 (the library's own step)
                    layer.peer_pumps.append(asyncio.ensure_future(self._hand_out(layer, layer.channels[name])))
                layer.peer_groups = getattr(layer, "peer_groups", {})
                layer.peer_inbox = inbox
        return inbox

    async def _hand_out(self, layer, arrivals: asyncio.Queue) -> None:
        """Hand each message published to the inbox or the broadcast channel to its channel, or
        to this process's members of its group (each its own copy, as through Redis)."""
        while True:
            raw = await arrivals.get()
            try:
                message = self.deserialize(raw)
                target, group = message.pop(_TARGET, None), message.pop(_GROUP, None)
            except Exception:  # one bad publication must not end the delivery of all the others
                logger.exception("dropped a message this process could not read")
                continue
            members = [target] if target else list(layer.peer_groups.get(group, ()))
            for index, channel in enumerate(members):
                if (queue := layer.channels.get(channel)) is not None:
                    queue.put_nowait(message if index == 0 else self.deserialize(self.serialize(message)))

logger = logging.getLogger(__name__)
_TARGET = "__asgi_channel__"
_GROUP = "__peer_group__"
# Groups kept in each process and reached through BROADCAST_CHANNEL (see the class).
BROADCAST_GROUP_PREFIXES = ("job.",)
BROADCAST_CHANNEL = "peer.broadcast"
_numbers = itertools.count()
