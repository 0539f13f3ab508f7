"""From eligible workers to routing candidates: reputation as of now, the node's measurements
for the model, and each worker's offered price (reads only; the scoring is in routing.py)."""

from django.conf import settings
from django.utils import timezone

from .metrics import decayed
from .models import CatalogueModel, Worker, WorkerModelStats
from .routing import Candidate, RoutePreferences, route_order
from .selectors import workers_eligible


def worker_price_per_token(worker: Worker, public_model: str) -> int:
    """micro-USDC per token the worker asks for `public_model`, or the node's default price."""
    return _offer_price(getattr(worker, "offers", None), public_model)


def _offer_price(offers, public_model: str) -> int:
    offer = (offers or {}).get(public_model) or {}
    price = offer.get("price_per_token") if isinstance(offer, dict) else None
    return price if isinstance(price, int) and not isinstance(price, bool) and price >= 0 else settings.PEER_PRICE_PER_TOKEN


def candidates_for(*, eligible: list[tuple[Worker, dict]], public_model: str) -> list[Candidate]:
    now = timezone.now()
    stats = {(s.worker_id, s.model_id): s for s in WorkerModelStats.objects.filter(
        worker_id__in=[worker.id for worker, _ in eligible])}
    found = []
    for worker, model in eligible:
        measured = stats.get((worker.id, model["id"]))
        found.append(Candidate(
            worker_id=str(worker.id), name=worker.name,
            reputation=decayed(worker.reputation, worker.reputation_updated_at, now),
            price_per_token=worker_price_per_token(worker, public_model),
            tokens_per_second=measured.tokens_per_second if measured else None,
            ttft_ms=measured.ttft_ms if measured else None))
    return found


def price_ceiling(*, public_model: str, tier: str, max_price: int | None) -> int:
    """The per-token price a quote must hold for: the dearest registered worker's offer for the
    model (or the default), never above the client's max_price. Failover can then never cost
    more than was held."""
    # Two columns rather than whole rows: this runs on every request, and building every
    # registered worker's model instance was a large part of the node's CPU (docs/benchmarks.md).
    prices = [_offer_price(offers, public_model)
              for tiers, offers in Worker.objects.filter(revoked_at__isnull=True).values_list("tiers", "offers")
              if tier in tiers]
    ceiling = max(prices, default=settings.PEER_PRICE_PER_TOKEN)
    return min(ceiling, max_price) if max_price is not None else ceiling


def workers_ranked(*, entry: CatalogueModel, tier: str, route: RoutePreferences | None,
                   price_ceiling: int) -> list[tuple[Worker, dict, int]]:
    """Idle eligible workers, best first by the routing score and the client's preferences,
    each with the served model and the price per token it will be charged at (at most
    `price_ceiling`, what the job's hold covers)."""
    eligible = workers_eligible(entry=entry, tier=tier)
    by_id = {str(worker.id): (worker, model) for worker, model in eligible}
    ranked = route_order(candidates_for(eligible=eligible, public_model=entry.name), route)
    return [(*by_id[r.candidate.worker_id], r.candidate.price_per_token) for r in ranked
            if r.candidate.price_per_token <= price_ceiling]
