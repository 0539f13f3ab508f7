from .models import CatalogueModel, Worker


def catalogue_get(*, name: str) -> CatalogueModel | None:
    return CatalogueModel.objects.filter(name=name, active=True).first()


def catalogue_list():
    return CatalogueModel.objects.filter(active=True).order_by("name")


def workers_eligible(*, entry: CatalogueModel, tier: str, status: str = Worker.Status.IDLE) -> list[tuple[Worker, dict]]:
    """Connected workers of `status` that may serve `tier` and hold an accepted digest of the
    model (and, for the verified tier, a sufficient bond), least recently used first (a
    first-cut fairness rule; scored routing comes later)."""
    found = []
    queryset = Worker.objects.filter(status=status, revoked_at__isnull=True).order_by("last_job_at", "created_at")
    for worker in queryset:
        if tier not in worker.tiers:
            continue
        model = next((m for m in worker.models_served if entry.is_served_by(m)), None)
        if model is not None:
            found.append((worker, model))
    if tier == "verified" and found:
        # The verified tier is bonded: a worker without enough locked $PEER is not eligible.
        from apps.staking.selectors import workers_with_sufficient_bond

        bonded = workers_with_sufficient_bond(worker_ids=[worker.id for worker, _ in found])
        found = [(worker, model) for worker, model in found if worker.id in bonded]
    return found


def tier_has_workers(*, tier: str) -> bool:
    """Whether any non-revoked worker is registered for the tier: if none, waiting is pointless."""
    return any(tier in tiers for tiers in
               Worker.objects.filter(revoked_at__isnull=True).values_list("tiers", flat=True))


def workers_online_count() -> int:
    return Worker.objects.exclude(status=Worker.Status.OFFLINE).count()


def workers_serving_count(*, entry: CatalogueModel) -> int:
    """Connected workers (idle or busy) holding an accepted digest of the model."""
    return sum(1 for models in Worker.objects.exclude(status=Worker.Status.OFFLINE)
               .filter(revoked_at__isnull=True).values_list("models_served", flat=True)
               if any(entry.is_served_by(m) for m in models))
