"""Waking a relay that waits for a free worker when this process lets a worker go.

A request that finds every eligible worker busy waits for one (relay._route), trying a claim
every ROUTE_POLL_SECONDS: up to that long after a worker became free, for nothing. A worker is
let go here when its agent link forwards the job's last frame (consumers.py) or an embedding
relay ends (embeddings.py), so this process wakes one waiter at once; a worker freed on another
node process is still found at the next poll.

One waiter per vacancy, the longest waiting: waking every waiting relay would make each try a
claim (a database call) for one worker. The woken one may not be able to use that worker (another
model, or a new request claimed it first); it goes back to waiting, and the worker is found at
the next poll, as without this.
"""

import asyncio
import weakref
from collections import deque

# Per event loop: the node runs one per process; tests may run several in turn.
_waiting: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, deque[asyncio.Future]]" = \
    weakref.WeakKeyDictionary()


async def vacancy_wait(timeout: float) -> None:
    """Return when this process lets a worker go and this waiter is first in line, or after
    `timeout` seconds."""
    loop = asyncio.get_running_loop()
    line = _waiting.setdefault(loop, deque())
    woken = loop.create_future()
    line.append(woken)
    try:
        await asyncio.wait({woken}, timeout=timeout)
    finally:
        if not woken.done():
            woken.cancel()
            line.remove(woken)


def vacancy_announce() -> None:
    """A worker was let go in this process: wake the relay that has waited longest, if any."""
    line = _waiting.get(asyncio.get_running_loop())
    while line:
        woken = line.popleft()
        if not woken.done():
            woken.set_result(None)
            return
