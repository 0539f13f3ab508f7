"""Waking a relay that waits for a free worker when this process lets a worker go.

A request that finds every eligible worker busy waits for one (relay._route), trying a claim
every ROUTE_POLL_SECONDS: up to that long after a worker became free, for nothing. A worker is
let go here when its agent link forwards the job's last frame (consumers.py) or an embedding
relay ends (embeddings.py), so this process wakes one waiter at once; a worker freed on another
node process is still found at the next poll.

One waiter per vacancy, the one that began waiting first: each waiter says when it began
(`since`) every time it waits again, so its place holds across its polls and a woken one that
lost the worker to another request keeps it too. Waking every waiting relay would make each try
a claim (a database call) for one worker. The woken one may not be able to use that worker
(another model); it waits again, and the worker is found at the next poll, as without this.
"""

import asyncio
import itertools
import weakref

# Per event loop (the node runs one per process; tests may run several in turn): the waiters,
# (since, arrival number) -> the future that wakes them.
_waiting: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()
_arrivals = itertools.count()


async def vacancy_wait(timeout: float, *, since: float) -> None:
    """Return when this process lets a worker go and no waiter began waiting before `since`
    (a time.monotonic() the caller keeps for its whole wait), or after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    waiters = _waiting.setdefault(loop, {})
    place, woken = (since, next(_arrivals)), loop.create_future()
    waiters[place] = woken
    try:
        await asyncio.wait({woken}, timeout=timeout)
    finally:
        if waiters.get(place) is woken:
            del waiters[place]
        woken.cancel()


def vacancy_announce() -> None:
    """A worker was let go in this process: wake the relay that began waiting first, if any."""
    waiters = _waiting.get(asyncio.get_running_loop())
    if waiters:
        first = min(waiters)
        waiters.pop(first).set_result(None)
