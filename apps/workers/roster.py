"""The routing roster: for one (model, tier), every connected worker that may serve it, scored,
plus what the quote needs (the dearest offer) — read once and kept in the process for
PEER_ROUTING_CACHE_SECONDS, so routing a job costs no scan of the fleet.

Why a cache: ranking read and scored every worker on every request, and with 200 registered
workers that was about a quarter of the node's CPU per job (docs/benchmarks.md). What changes with
every job (idle or busy, the link's channel) is not taken from the roster: the claim
(services.worker_claim_first) checks it in SQL. What may be up to the cache's age old: reputation
and measured speed (they move a tenth of the way per job), a worker that came online on another
node process (it is routed to once the roster is rebuilt), a bond that fell below the floor, and
an operator's new prices (the quote's ceiling is the dearest offer as of the roster; a job is
never routed to a worker whose price is above the ceiling its hold was quoted at).
"""

import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from .candidates import candidates_for, offer_price
from .models import CatalogueModel, Worker
from .routing import Candidate, Ranked, RoutePreferences, route_order
from .selectors import workers_eligible

_lock = threading.Lock()
_rosters: dict[tuple[str, str], "Roster"] = {}
_rebuilding: set[tuple[str, str]] = set()  # keys a thread is rebuilding now
DEFAULT_ROUTE = RoutePreferences()


@dataclass(frozen=True)
class Roster:
    candidates: list[Candidate]  # connected, eligible workers (idle or busy), least recently used first
    models: dict[str, dict]  # worker id -> the model entry (id, digest) it serves the job with
    default_order: list[Ranked]  # route_order(candidates) without the client's preferences
    price_ceiling: int  # the dearest offer among non-revoked workers registered for the tier
    tier_registered: bool  # whether any non-revoked worker is registered for the tier at all
    built_at: float


def roster_get(*, entry: CatalogueModel, tier: str) -> Roster:
    """The roster for (entry, tier), rebuilt when older than PEER_ROUTING_CACHE_SECONDS.

    One thread rebuilds an expired roster; the others go on with the expired one meanwhile (older
    by at most the rebuild's time). Every request that found it expired used to rebuild it: at 64
    concurrent requests and 200 workers, 12% of the node's CPU (docs/benchmarks.md)."""
    key = (entry.name, tier)
    found = _rosters.get(key)
    if found is not None and time.monotonic() - found.built_at < settings.PEER_ROUTING_CACHE_SECONDS:
        return found
    with _lock:
        if found is not None and key in _rebuilding:
            return found
        _rebuilding.add(key)
    try:
        roster = _roster_build(entry=entry, tier=tier)
        with _lock:
            _rosters[key] = roster
    finally:
        with _lock:
            _rebuilding.discard(key)
    return roster


def roster_forget() -> None:
    """Drop every cached roster."""
    with _lock:
        _rosters.clear()


def roster_changed() -> None:
    """This process changed a worker's routing facts (a hello, a registration, a revocation, new
    offers, a bond): its rosters are stale now, and again at commit, so that one rebuilt meanwhile
    misses nothing. Other processes see the change when their rosters age out."""
    roster_forget()
    transaction.on_commit(roster_forget)


def _roster_build(*, entry: CatalogueModel, tier: str) -> Roster:
    eligible = workers_eligible(entry=entry, tier=tier, statuses=(Worker.Status.IDLE, Worker.Status.BUSY))
    candidates = candidates_for(eligible=eligible, public_model=entry.name)
    # Two columns of every non-revoked worker rather than whole rows (see price_ceiling's callers).
    registered = [offers for tiers, offers in Worker.objects.filter(revoked_at__isnull=True)
                  .values_list("tiers", "offers") if tier in tiers]
    return Roster(candidates=candidates, models={str(worker.id): model for worker, model in eligible},
                  default_order=route_order(candidates, DEFAULT_ROUTE),
                  price_ceiling=max((offer_price(offers, entry.name) for offers in registered),
                                    default=settings.PEER_PRICE_PER_TOKEN),
                  tier_registered=bool(registered), built_at=time.monotonic())


def price_ceiling(*, entry: CatalogueModel, tier: str, max_price: int | None) -> int:
    """The per-token price a quote must hold for: the dearest registered worker's offer for the
    model (or the default), never above the client's max_price. Failover can then never cost
    more than was held."""
    ceiling = roster_get(entry=entry, tier=tier).price_ceiling
    return min(ceiling, max_price) if max_price is not None else ceiling


def tier_has_workers(*, entry: CatalogueModel, tier: str) -> bool:
    """Whether any non-revoked worker is registered for the tier: if none, waiting is pointless."""
    return roster_get(entry=entry, tier=tier).tier_registered


def workers_ranked(*, entry: CatalogueModel, tier: str, route: RoutePreferences | None,
                   price_ceiling: int) -> list[tuple[str, dict, int]]:
    """(worker id, served model, price per token) of the eligible workers, best first by the
    routing score and the client's preferences, priced at most `price_ceiling` (what the job's
    hold covers). Busy ones included: the claim takes the first idle one."""
    roster = roster_get(entry=entry, tier=tier)
    ranked = roster.default_order if route is None or route == DEFAULT_ROUTE else route_order(roster.candidates, route)
    return [(r.candidate.worker_id, roster.models[r.candidate.worker_id], r.candidate.price_per_token)
            for r in ranked if r.candidate.price_per_token <= price_ceiling]
