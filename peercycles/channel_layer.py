"""The Redis channel layer, with `send` in one round trip.

channels_redis's `send` makes four round trips per message (drop expired messages, count them,
add, set the expiry), and every token of every stream is one `send` from the worker's consumer to
its relay (docs/benchmarks.md). This does the same four steps in one Lua script, on the same
keys, with the same scores, capacity rule and message format, so it mixes with the library's own
`receive` and `group_send` (and with nodes still running the library's `send`).
"""

import time

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer

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
