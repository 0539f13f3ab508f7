"""How many jobs one node process relays at once, and a bounded, first-come wait for the rest.

Past a certain number of concurrent streams a node process spends its time on frames it can
no longer deliver in time: acceptances queue behind other jobs' deltas in the process's one
inbox, relays give up on workers that did accept, and every stream fails (measured: 200
streams on 2 cores, docs/benchmarks.md). Admitting at most `PEER_NODE_JOB_LIMIT` jobs per
process keeps the admitted ones whole; the others wait their turn in order, holding nothing
(no job, no credits held, no database connection), and are told 503 + Retry-After when the wait
is too long or too many already wait.

A gate per event loop: the node runs one loop per process; tests may run several in turn.
"""

import asyncio
import logging
import weakref
from collections import deque

from django.conf import settings

from .errors import ApiError

logger = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 2


class NodeBusy(ApiError):
    def __init__(self, message: str):
        super().__init__(503, message, code="node_busy", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


class Slot:
    """One admitted job. Released once, by `release()` or, for a response that was never sent
    (the client left before its stream started), when the object holding it is collected."""

    def __init__(self, gate: "Gate | None"):
        self._gate = gate

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.leave_threadsafe()

    def release_with(self, owner) -> "Slot":
        weakref.finalize(owner, self.release)
        return self


class Gate:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.running = 0
        self.waiting: deque[asyncio.Future] = deque()

    async def enter(self, *, limit: int, wait_limit: int, timeout: float) -> Slot:
        if self.running < limit and not self.waiting:
            self.running += 1
            return Slot(self)
        if len(self.waiting) >= wait_limit:
            raise NodeBusy(f"This node is relaying {limit} jobs and {len(self.waiting)} more wait for their "
                           f"turn; retry shortly. Nothing was charged.")
        turn = self.loop.create_future()
        self.waiting.append(turn)
        try:
            done, _ = await asyncio.wait({turn}, timeout=timeout)
        except asyncio.CancelledError:  # the client left while it waited
            self._give_up(turn)
            raise
        if not done:
            self._give_up(turn)
            raise NodeBusy(f"This node relayed {limit} jobs for the whole {timeout:.0f}s this request waited "
                           f"for its turn; retry shortly. Nothing was charged.")
        return Slot(self)

    def leave(self) -> None:
        """A job ended: its place goes straight to the longest waiting request, else is freed."""
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.running -= 1

    def leave_threadsafe(self) -> None:
        try:
            if asyncio.get_running_loop() is self.loop:
                self.leave()
                return
        except RuntimeError:  # no loop in this thread: a collector or a sync thread released it
            pass
        try:
            if self.loop.is_closed():
                return
            self.loop.call_soon_threadsafe(self.leave)
        except RuntimeError:  # the loop closed meanwhile (a test's loop): nothing waits on it
            pass

    def _give_up(self, turn: asyncio.Future) -> None:
        if turn.done() and not turn.cancelled():  # it was handed a place as it gave up: pass it on
            self.leave()
            return
        turn.cancel()
        try:
            self.waiting.remove(turn)
        except ValueError:
            pass


_gates: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Gate]" = weakref.WeakKeyDictionary()


def gate_for_this_loop() -> Gate:
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = Gate(loop)
    return gate


async def job_admit() -> Slot:
    """A place for one job on this process, waiting up to PEER_QUEUE_TIMEOUT for it; NodeBusy
    (503, Retry-After) when none came or the wait is full. PEER_NODE_JOB_LIMIT 0: no bound."""
    limit = settings.PEER_NODE_JOB_LIMIT
    if limit <= 0:
        return Slot(None)
    return await gate_for_this_loop().enter(limit=limit, wait_limit=settings.PEER_NODE_WAIT_LIMIT,
                                            timeout=settings.PEER_QUEUE_TIMEOUT)
