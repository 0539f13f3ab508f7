from django.conf import settings

from apps.workers.selectors import catalogue_get, catalogue_list, model_price_ranges, workers_serving_count


def jobs_waiting_count(*, public_model: str, tier: str) -> int:
    """Jobs held and not yet started on a worker: the queue a new request would join."""
    from .models import Job

    return Job.objects.filter(public_model=public_model, tier=tier, status=Job.Status.QUEUED,
                              hold_state=Job.HoldState.HELD).count()


def models_listing() -> list[dict]:
    """/v1/models: each public name, what actually serves it, its kind (chat or embedding, with the
    vectors' dimensions), how many workers are online, and per tier the range of per-token prices
    those workers ask (micro-USDC; 10,000 = 1 credit) plus the tier's flat base price per job."""
    listing = []
    for entry in catalogue_list():
        bases = (settings.PEER_EMBEDDING_BASE_PRICE if entry.kind == entry.Kind.EMBEDDING
                 else settings.PEER_TIER_BASE_PRICE)
        pricing = {tier: {**prices, "base_price": bases[tier]}
                   for tier, prices in model_price_ranges(entry=entry).items()
                   if tier in settings.PEER_TIER_BASE_PRICE}
        listing.append({
            "id": entry.name, "object": "model", "created": 0, "owned_by": "peer-cycles",
            "peer": {"served_model": entry.served_model, "digests": entry.digests, "kind": entry.kind,
                     "dimensions": entry.dimensions, "description": entry.description,
                     "context_length": entry.context_length,
                     "workers_online": workers_serving_count(entry=entry), "pricing": pricing},
        })
    return listing


__all__ = ["catalogue_get", "jobs_waiting_count", "models_listing"]


def job_get(*, job_id):
    from .models import Job

    return Job.objects.filter(id=job_id).first()
