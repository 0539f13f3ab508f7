import shlex
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from apps.credits.models import LedgerAccount

from .metrics import decayed
from .models import CatalogueModel, Worker


def catalogue_get(*, name: str) -> CatalogueModel | None:
    return CatalogueModel.objects.filter(name=name, active=True).first()


def catalogue_list():
    return CatalogueModel.objects.filter(active=True).order_by("name")


# What the roster reads (status and the link's channel are read by the claim itself).
ROUTING_FIELDS = ("id", "name", "tiers", "models_served", "offers", "reputation", "reputation_updated_at", "signing_key",
                  "attestation", "enclave_key", "last_job_at", "created_at")


def workers_eligible(*, entry: CatalogueModel, tier: str,
                     statuses: tuple = (Worker.Status.IDLE,)) -> list[tuple[Worker, dict]]:
    """Connected workers in one of `statuses` that may serve `tier` and hold an accepted digest
    of the model (and, for the verified tier, a signing key and a sufficient bond), least
    recently used first."""
    found = []
    queryset = Worker.objects.filter(status__in=statuses, revoked_at__isnull=True).order_by(
        "last_job_at", "created_at").only(*ROUTING_FIELDS)
    now = timezone.now()
    for worker in queryset:
        if tier not in worker.tiers:
            continue
        # A model the agent serves from its enclave takes sealed jobs only, and only while the
        # node holds a current verdict on the enclave's evidence for it (confidential tier);
        # any other model never gets a confidential job.
        model = next((m for m in worker.models_served if entry.is_served_by(m)
                      and bool(m.get("confidential")) == (tier == "confidential")), None)
        if model is not None and (tier != "confidential" or model_attested(worker, model["digest"], now)):
            found.append((worker, model))
    if tier == "verified":
        # Verified answers carry the worker's signed commitment: an agent without a key cannot.
        found = [(worker, model) for worker, model in found if worker.signing_key]
    if tier == "verified" and found:
        # A proven fault halves reputation: below the floor a worker is off the verified tier.
        found = [(worker, model) for worker, model in found if decayed(
            worker.reputation, worker.reputation_updated_at, now) >= settings.PEER_VERIFIED_REPUTATION_FLOOR]
    if tier == "verified" and found:
        # The verified tier is bonded: a worker without enough locked $PEER is not eligible.
        from apps.staking.selectors import workers_with_sufficient_bond

        bonded = workers_with_sufficient_bond(worker_ids=[worker.id for worker, _ in found])
        found = [(worker, model) for worker, model in found if worker.id in bonded]
    return found


def model_attested(worker: Worker, model_digest: str, now=None) -> dict | None:
    """The worker's current ok attestation verdict for `model_digest` (recorded by
    apps/verification/attestation.py), or None: none, refused or expired."""
    record = ((worker.attestation or {}).get("models") or {}).get(model_digest)
    if not record or not record.get("ok") or not record.get("expires_at"):
        return None
    expires = datetime.fromisoformat(record["expires_at"])
    return record if expires > (now or timezone.now()) else None


def worker_for_enclave(*, enclave_key: str) -> Worker | None:
    """The connected worker whose attested enclave holds `enclave_key`, if any."""
    if not enclave_key:
        return None
    return Worker.objects.filter(enclave_key=enclave_key, revoked_at__isnull=True) \
        .exclude(status=Worker.Status.OFFLINE).first()


def worker_job_state(*, worker_id, job_id, silence_seconds: float) -> str:
    """"holds": the worker is still claimed for the job and heard from lately; "released": its
    consumer let it go (after the job's last frame, or when its link dropped); "silent": claimed,
    but nothing from its agent for `silence_seconds` (heartbeats included) — its link died where
    nobody could say so, e.g. with the node process that held it."""
    row = Worker.objects.filter(id=worker_id).values("current_job_id", "last_seen_at").first()
    if row is None or str(row["current_job_id"]) != str(job_id):
        return "released"
    cutoff = timezone.now() - timezone.timedelta(seconds=silence_seconds)
    return "silent" if row["last_seen_at"] is not None and row["last_seen_at"] < cutoff else "holds"


def workers_online_count() -> int:
    return Worker.objects.exclude(status=Worker.Status.OFFLINE).count()


def workers_serving_count(*, entry: CatalogueModel) -> int:
    """Connected workers (idle or busy) holding an accepted digest of the model."""
    return sum(1 for models in Worker.objects.exclude(status=Worker.Status.OFFLINE)
               .filter(revoked_at__isnull=True).values_list("models_served", flat=True)
               if any(entry.is_served_by(m) for m in models))


def model_price_ranges(*, entry: CatalogueModel) -> dict[str, dict]:
    """Per tier, the lowest and highest per-token price asked by the connected workers that serve
    the model (micro-USDC), and how many there are: what /v1/models shows a buyer. A tier no
    connected worker serves is absent."""
    from .candidates import worker_price_per_token

    ranges: dict[str, dict] = {}
    for worker in Worker.objects.exclude(status=Worker.Status.OFFLINE).filter(revoked_at__isnull=True):
        if not any(entry.is_served_by(m) for m in worker.models_served):
            continue
        price = worker_price_per_token(worker, entry.name)
        for tier in worker.tiers:
            found = ranges.setdefault(tier, {"min_price_per_token": price, "max_price_per_token": price,
                                             "workers": 0})
            found["min_price_per_token"] = min(found["min_price_per_token"], price)
            found["max_price_per_token"] = max(found["max_price_per_token"], price)
            found["workers"] += 1
    return ranges


# --- Operator onboarding reads ---------------------------------------------------------------

def workers_of_operator(*, operator):
    return Worker.objects.filter(operator=operator).order_by("created_at")


def worker_of_operator(*, operator, worker_id) -> Worker | None:
    """The operator's own worker, or None: another operator's worker is as good as missing."""
    return Worker.objects.filter(operator=operator, id=worker_id).first()


def worker_link_state(worker: Worker) -> str:
    """What the operator sees: revoked, offline, or online and idle or busy."""
    if worker.revoked_at is not None:
        return "revoked"
    return worker.status if worker.status != Worker.Status.OFFLINE else "offline"


def worker_jobs_recent(*, worker: Worker, limit: int = 50):
    """Jobs that ran (or last ran, after a failover) on the worker, newest first."""
    return worker.jobs.order_by("-created_at")[:limit]


def worker_reputation_now(*, worker: Worker) -> float | None:
    """The reputation routing uses now (decayed since its last outcome), or None if never measured."""
    from .metrics import decayed

    if worker.reputation_updated_at is None:
        return None
    return decayed(worker.reputation, worker.reputation_updated_at, timezone.now())


def worker_earnings_get(*, worker: Worker) -> int:
    """micro-USDC earned and not yet paid out (the worker's ledger account; reads create nothing)."""
    return LedgerAccount.objects.filter(code=f"worker:{worker.pk}:USDC").values_list(
        "balance", flat=True).first() or 0


def worker_payouts_recent(*, worker: Worker, limit: int = 20):
    return worker.payouts.order_by("-created_at")[:limit]


def node_url() -> str:
    """The URL agents connect to (SITE_URL): what an operator passes as --server."""
    return settings.SITE_URL.rstrip("/")


def agent_command(*, raw_token: str, tiers=()) -> str:
    """The exact command that starts the agent for a worker with this token. A confidential
    worker's agent runs its model in an enclave process; the only enclave the agent has yet is
    the simulated one, which a node routes to only if it allows simulated enclaves."""
    command = f"python -m worker --server {shlex.quote(node_url())} --token {shlex.quote(raw_token)}"
    return command + " --enclave simulated" if "confidential" in tiers else command
