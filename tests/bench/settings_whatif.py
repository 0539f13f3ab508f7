"""The node's settings with a change the relay benchmark points at, to measure it before it is
adopted (bench_vs_litellm.py --what-if NAME; docs/benchmarks.md has the figures). NAME comes in
PEER_BENCH_WHATIF:

  pool    a larger Redis pool for channels_redis: redis-py 8's asyncio ConnectionPool allows 100
          connections by default and raises "Too many connections" past that, which drops
          agent links and fails jobs at about 100 concurrent jobs on one node process.
  pubsub  the same, and channels_redis's pub/sub layer instead of its list-based one: a frame
          is one PUBLISH instead of four round trips (group_send) plus a BZPOPMIN and a cleanup
          per receive, serialized by the process's one receive lock. Delivery is at most once,
          which the relay's sequence and silence checks turn into a refunded failure.
"""

import os

from peercycles.settings import *  # noqa: F401,F403
from peercycles.settings import CHANNEL_LAYERS, REDIS_URL

WHAT_IF = os.environ.get("PEER_BENCH_WHATIF", "pool")
if WHAT_IF not in ("pool", "pubsub"):
    raise ValueError(f"PEER_BENCH_WHATIF must be pool or pubsub, not {WHAT_IF!r}")
if REDIS_URL:
    CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["max_connections"] = 2000
    if WHAT_IF == "pubsub":
        CHANNEL_LAYERS["default"]["BACKEND"] = "channels_redis.pubsub.RedisPubSubChannelLayer"
