"""From eligible workers to routing candidates: reputation as of now, the node's measurements
for the model, and each worker's offered price (reads only; the scoring is in routing.py, the
cached roster routing reads in roster.py)."""

from django.conf import settings
from django.utils import timezone

from .metrics import decayed
from .models import Worker, WorkerModelStats
from .routing import Candidate


def worker_price_per_token(worker: Worker, public_model: str) -> int:
    """micro-USDC per token the worker asks for `public_model`, or the node's default price."""
    return offer_price(getattr(worker, "offers", None), public_model)


def offer_price(offers, public_model: str) -> int:
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
