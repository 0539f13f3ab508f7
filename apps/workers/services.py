"""Worker registry writes: registration, the agent link's life cycle, claiming for a job."""

import hashlib
import json
import logging
import secrets

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction
from django.utils import timezone
from solders.pubkey import Pubkey

from .models import TIERS, CatalogueModel, Worker
from .roster import roster_changed, workers_ranked

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "pcw_"


class WorkerAuthError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def worker_token_hash(raw_token: str) -> str:
    return hashlib.sha256(raw_token.encode("utf-8")).hexdigest()


def worker_register(*, operator, name: str, tiers: list[str]) -> tuple[Worker, str]:
    """Create a worker and return its one-time token (only the hash is stored)."""
    unknown = set(tiers) - set(TIERS)
    if unknown or not tiers:
        raise ValueError(f"tiers must be a non-empty subset of {TIERS}")
    raw_token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    worker = Worker.objects.create(operator=operator, name=name[:100], tiers=list(tiers),
                                   token_hash=worker_token_hash(raw_token), token_prefix=raw_token[:10])
    roster_changed()
    return worker, raw_token


def worker_token_rotate(*, worker_id) -> str:
    """Issue a new token (the old one stops working) and un-revoke the worker."""
    raw_token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    Worker.objects.filter(id=worker_id).update(token_hash=worker_token_hash(raw_token),
                                               token_prefix=raw_token[:10], revoked_at=None)
    roster_changed()
    return raw_token


def worker_connect(*, raw_token: str, hello: dict, channel_name: str) -> tuple[Worker, str, object]:
    """Bring a worker online on this agent link; returns it, the channel of the link it replaced
    ("" if none: a newer link with the same token replaces an older one) and the job that link
    still held (None if none): that link's node process may have died without telling the job."""
    worker = Worker.objects.filter(token_hash=worker_token_hash(raw_token)).first()
    if worker is None:
        raise WorkerAuthError("bad_token", "Unknown worker token.")
    if worker.revoked_at is not None:
        raise WorkerAuthError("revoked", "This worker's token was revoked.")
    now = timezone.now()
    with transaction.atomic():
        # Checked again under the row lock: a revocation or rotation that committed since the
        # lookup above has already sent its disconnect to the previous link, not to this one.
        previous, token_hash, revoked_at, stranded_job = Worker.objects.select_for_update().values_list(
            "channel_name", "token_hash", "revoked_at", "current_job_id").get(id=worker.id)
        if revoked_at is not None:
            raise WorkerAuthError("revoked", "This worker's token was revoked.")
        if token_hash != worker.token_hash:
            raise WorkerAuthError("bad_token", "This worker's token was replaced by a new one.")
        Worker.objects.filter(id=worker.id).update(
            status=Worker.Status.IDLE, channel_name=channel_name, current_job_id=None,
            models_served=hello["models"], hardware=hello.get("hardware") or {},
            signing_key=hello.get("signing_key") or "",
            # A new link may front a new enclave: confidential routing waits for fresh evidence.
            attestation={}, enclave_key="", attested_until=None,
            agent_version=hello["agent_version"][:40], connected_at=now, last_seen_at=now)
    roster_changed()  # this process routes to it at once; its models may have changed
    worker.refresh_from_db()
    return worker, previous, stranded_job


def worker_disconnect(*, worker_id, channel_name: str):
    """Take the worker offline if this link is still its current one; returns the job in flight."""
    with transaction.atomic():
        worker = Worker.objects.select_for_update().filter(id=worker_id, channel_name=channel_name).first()
        if worker is None:
            return None
        job_id = worker.current_job_id
        Worker.objects.filter(id=worker_id).update(status=Worker.Status.OFFLINE, channel_name="",
                                                   current_job_id=None)
    return job_id


def worker_seen(*, worker_id) -> None:
    Worker.objects.filter(id=worker_id).update(last_seen_at=timezone.now())


def worker_claim(*, worker_id, job_id) -> bool:
    """Claim an idle worker for a job; a conditional update, so only one job wins."""
    return Worker.objects.filter(id=worker_id, status=Worker.Status.IDLE, revoked_at__isnull=True).update(
        status=Worker.Status.BUSY, current_job_id=job_id) == 1


CLAIM_BATCH = 32
# The claim, for a statement to build on: `wanted` (id, model, price, position), best first,
# from the arrays %(ids)s, %(models)s and %(prices)s; `claimed` the first of them that is idle,
# not revoked and still serves that model, made busy with %(job)s. Concurrent claims skip each
# other's locked rows, so they take the next worker instead of queueing behind the same best
# one and retrying it (docs/benchmarks.md).
CLAIM_CTES = f"""
wanted AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(models)s::jsonb[], %(prices)s::bigint[])
        WITH ORDINALITY AS t(id, model, price, position)
), claimed AS (
    UPDATE {Worker._meta.db_table} SET status = 'busy', current_job_id = %(job)s
    WHERE status = 'idle' AND id = (
        SELECT w.id FROM {Worker._meta.db_table} w JOIN wanted ON w.id = wanted.id
        WHERE w.status = 'idle' AND w.revoked_at IS NULL AND w.models_served @> jsonb_build_array(wanted.model)
        ORDER BY wanted.position LIMIT 1
        FOR UPDATE OF w SKIP LOCKED)
    RETURNING id, channel_name
)"""
_CLAIM_FIRST_SQL = f"WITH {CLAIM_CTES} SELECT id, channel_name FROM claimed"


def claim_run(sql: str, *, ranked: list[tuple], params: dict) -> tuple | None:
    """Run `sql`, a statement built on CLAIM_CTES, over `ranked` ((worker id, model entry, price
    per token), best first): the best CLAIM_BATCH first (usually one of them is idle, and a short
    array is cheap), then the next. Its first row, or None when no worker was claimed."""
    for start in range(0, len(ranked), CLAIM_BATCH):
        batch = ranked[start:start + CLAIM_BATCH]
        values = {"ids": [str(worker_id) for worker_id, _, _ in batch],
                  "models": [json.dumps({"id": model["id"], "digest": model["digest"]}) for _, model, _ in batch],
                  "prices": [price for _, _, price in batch], **params}
        with connection.cursor() as cursor:
            cursor.execute(sql, values)
            row = cursor.fetchone()
        if row:
            return row
    return None


def worker_claim_first(*, ranked: list[tuple], job_id) -> tuple | None:
    """Claim the first of `ranked` ((worker id, model entry) pairs, best first) that is idle, not
    revoked and still serves that model, for `job_id`: (worker id, channel name), or None. On
    PostgreSQL one statement (CLAIM_CTES)."""
    if not ranked:
        return None
    if connection.vendor == "postgresql":
        row = claim_run(_CLAIM_FIRST_SQL, ranked=[(worker_id, model, 0) for worker_id, model in ranked],
                        params={"job": str(job_id)})
        return (row[0], row[1]) if row else None
    for worker_id, model in ranked:  # SQLite (`make run` without services): one worker at a time
        served = Worker.objects.filter(id=worker_id).values_list("models_served", flat=True).first() or []
        if any(m.get("id") == model["id"] and m.get("digest") == model["digest"] for m in served) \
                and worker_claim(worker_id=worker_id, job_id=job_id):
            return worker_id, Worker.objects.values_list("channel_name", flat=True).get(id=worker_id)
    return None


def workers_claimable(*, entry: CatalogueModel, tier: str, route, price_ceiling: int, exclude: set,
                      only: set | None = None) -> list[tuple[str, dict, int]]:
    """(worker id, model entry, price per token) of the eligible workers a job may claim, best
    first (workers_ranked), less those in `exclude` and, when `only` is given, those not in it."""
    return [(worker_id, model, price) for worker_id, model, price in workers_ranked(
        entry=entry, tier=tier, route=route, price_ceiling=price_ceiling)
        if worker_id not in exclude and (only is None or worker_id in only)]


def worker_claim_best(*, entry: CatalogueModel, tier: str, route, price_ceiling: int, job_id,
                      exclude: set, only: set | None = None) -> tuple | None:
    """Claim for `job_id` the best idle eligible worker (the roster's order and the client's
    route preferences, priced within `price_ceiling`) whose id is not in `exclude` (and is in
    `only`, when given: a sealed request's enclave): (worker id, its channel, the model entry it
    serves the job with, its price per token), or None."""
    ranked = workers_claimable(entry=entry, tier=tier, route=route, price_ceiling=price_ceiling, exclude=exclude,
                               only=only)
    claimed = worker_claim_first(ranked=[(worker_id, model) for worker_id, model, _ in ranked], job_id=job_id)
    if claimed is None:
        return None
    worker_id, channel = claimed
    model, price = next((model, price) for wid, model, price in ranked if wid == str(worker_id))
    return worker_id, channel, model, price


_RELEASE_SQL = f"""
UPDATE {Worker._meta.db_table} SET status = 'idle', current_job_id = NULL, last_job_at = %s
WHERE id = %s AND status = 'busy' AND current_job_id = %s
"""


def worker_release(*, worker_id, job_id) -> bool:
    """Make the worker idle again after `job_id`; a no-op if it already moved on or went offline.
    Written by hand on PostgreSQL: the agent link runs it after every job, and the ORM's building
    of it cost more than the statement (docs/benchmarks.md)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_RELEASE_SQL, [timezone.now(), str(worker_id), str(job_id)])
            return cursor.rowcount == 1
    return Worker.objects.filter(id=worker_id, status=Worker.Status.BUSY, current_job_id=job_id).update(
        status=Worker.Status.IDLE, current_job_id=None, last_job_at=timezone.now()) == 1


def workers_release_job(*, job_id) -> int:
    """Let go of any worker still claimed for `job_id` (a job abandoned before its worker could
    have heard of it, or while it might not have): its agent refuses a next job as busy if it is
    in fact still running this one, which costs it nothing."""
    return Worker.objects.filter(status=Worker.Status.BUSY, current_job_id=job_id).update(
        status=Worker.Status.IDLE, current_job_id=None, last_job_at=timezone.now())


def worker_revoke(*, worker_id) -> bool:
    revoked = Worker.objects.filter(id=worker_id, revoked_at__isnull=True).update(revoked_at=timezone.now()) == 1
    roster_changed()
    return revoked


def workers_reap_silent(*, silence_seconds: float) -> list[tuple]:
    """Offline every worker not heard from in `silence_seconds`; returns (worker id, job id) for
    each job one of them held."""
    cutoff = timezone.now() - timezone.timedelta(seconds=silence_seconds)
    stale = list(Worker.objects.exclude(status=Worker.Status.OFFLINE).filter(last_seen_at__lt=cutoff)
                 .values_list("id", "channel_name"))
    return [(worker_id, job) for worker_id, channel in stale
            if (job := worker_disconnect(worker_id=worker_id, channel_name=channel))]


def job_relay_tell_worker_lost(*, worker_id, job_id) -> None:
    """The relay waiting on the job may be in another node process: tell it over the channel
    layer that its worker is gone, so its client gets an answer now instead of at the job's
    timeout. Best effort: without the layer the relay still ends at its own deadline."""
    message = "The worker stopped answering; the whole price was refunded."
    try:
        async_to_sync(get_channel_layer().group_send)(f"job.{job_id}", {
            "type": "job.frame", "worker_id": str(worker_id),
            "frame": {"type": "job.error", "job_id": str(job_id), "code": "worker_lost", "message": message}})
    except Exception:  # noqa: BLE001 - any layer failure: the caller's refund already stands
        logger.warning("could not tell job %s's relay that worker %s is lost", job_id, worker_id)


# --- Operator onboarding: the checked writes behind /operator/ and /api/workers/ ---------------

# Verified needs a bond to be routed; confidential an enclave whose evidence the node verified.
OPERATOR_TIERS = ("open", "verified", "confidential")
# micro-USDC per token (1 credit a token, 100x the default price): a quote holds for the dearest
# offer of the model, so one absurd price would price every client out.
MAX_PRICE_PER_TOKEN = 10_000


class WorkerInputError(ValueError):
    """Operator input that breaks a rule; `errors` maps each field to what is wrong with it."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


def check_worker_name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise WorkerInputError({"name": "A name is required."})
    if len(name.strip()) > 100:
        raise WorkerInputError({"name": "At most 100 characters."})
    return name.strip()


def check_hardware_description(text) -> str:
    if not isinstance(text, str):
        raise WorkerInputError({"hardware_description": "A text, e.g. \"RTX 4090, 24 GB, 64 GB RAM\"."})
    if len(text.strip()) > 300:
        raise WorkerInputError({"hardware_description": "At most 300 characters."})
    return text.strip()


def check_operator_tiers(tiers) -> list[str]:
    """The tiers an operator may choose: open, verified (routed only with a bond) and confidential
    (routed only while the agent's enclave is attested: docs/confidential.md)."""
    if not isinstance(tiers, list | tuple) or not tiers or not all(isinstance(t, str) for t in tiers):
        raise WorkerInputError({"tiers": f"Choose at least one tier of: {', '.join(OPERATOR_TIERS)}."})
    for tier in tiers:
        if tier not in OPERATOR_TIERS:
            raise WorkerInputError({"tiers": f"Unknown tier {tier!r}: choose from {', '.join(OPERATOR_TIERS)}."})
    return [tier for tier in OPERATOR_TIERS if tier in tiers]


def check_offers(offers) -> dict:
    """{"<public model name>": {"price_per_token": <whole micro-USDC, 0..MAX_PRICE_PER_TOKEN>}},
    names from the active catalogue."""
    example = '{"peer-mixtral": {"price_per_token": 100}}'
    if not isinstance(offers, dict):
        raise WorkerInputError({"offers": f"An object of public model name to price, e.g. {example}."})
    known = set(CatalogueModel.objects.filter(active=True).values_list("name", flat=True))
    checked = {}
    for name, offer in offers.items():
        if name not in known:
            raise WorkerInputError({"offers": f"Unknown model {name!r}; the catalogue has: "
                                              f"{', '.join(sorted(known)) or 'no models'}."})
        if not isinstance(offer, dict) or set(offer) != {"price_per_token"}:
            raise WorkerInputError({"offers": f"{name}: give exactly a price_per_token, e.g. {example}."})
        price = offer["price_per_token"]
        # bool is an int in Python, and a float (even 100.0) would be silently truncated: both refused.
        if isinstance(price, bool) or not isinstance(price, int):
            raise WorkerInputError({"offers": f"{name}: price_per_token must be a whole number of micro-USDC."})
        if price < 0:
            raise WorkerInputError({"offers": f"{name}: price_per_token must not be negative."})
        if price > MAX_PRICE_PER_TOKEN:
            raise WorkerInputError({"offers": f"{name}: price_per_token is at most {MAX_PRICE_PER_TOKEN} "
                                              "micro-USDC (1 credit a token)."})
        checked[name] = {"price_per_token": price}
    return checked


def check_payout_address(address) -> str:
    """A Solana address (base58 of 32 bytes), in canonical form; "" clears it."""
    if not isinstance(address, str):
        raise WorkerInputError({"payout_address": "A Solana address (base58) or an empty string."})
    address = address.strip()
    if not address:
        return ""
    try:
        key = Pubkey.from_string(address)
    except ValueError:
        raise WorkerInputError({"payout_address": "Not a Solana address: expected the base58 form of a "
                                                  "32-byte public key (32 to 44 characters)."}) from None
    if key == Pubkey.default() or str(key) != address:
        raise WorkerInputError({"payout_address": "Not a usable Solana wallet address."})
    return address


def _check_all(**checks) -> dict:
    """Run every check (a thunk per field) and report all failing fields at once."""
    values, errors = {}, {}
    for field, check in checks.items():
        try:
            values[field] = check()
        except WorkerInputError as exc:
            errors.update(exc.errors)
    if errors:
        raise WorkerInputError(errors)
    return values


def worker_onboard(*, operator, name, tiers, hardware_description="", offers=None) -> tuple[Worker, str]:
    """Check the operator's input, then register the worker; returns it with its one-time token
    (only the token's hash is stored). Raises WorkerInputError naming each bad field."""
    values = _check_all(name=lambda: check_worker_name(name), tiers=lambda: check_operator_tiers(tiers),
                        hardware_description=lambda: check_hardware_description(hardware_description),
                        offers=lambda: check_offers({} if offers is None else offers))
    with transaction.atomic():
        worker, raw_token = worker_register(operator=operator, name=values["name"], tiers=values["tiers"])
        worker.hardware_description, worker.offers = values["hardware_description"], values["offers"]
        worker.save(update_fields=["hardware_description", "offers"])
    roster_changed()
    return worker, raw_token


def worker_update(*, worker: Worker, name=None, hardware_description=None, payout_address=None,
                  offers=None) -> Worker:
    """Change what the operator set; None leaves a field as it is ("" clears the payout address).
    Raises WorkerInputError naming each bad field."""
    given = {"name": (name, check_worker_name), "hardware_description": (hardware_description,
             check_hardware_description), "payout_address": (payout_address, check_payout_address),
             "offers": (offers, check_offers)}
    changes = _check_all(**{field: (lambda v=value, c=check: c(v))
                            for field, (value, check) in given.items() if value is not None})
    for field, value in changes.items():
        setattr(worker, field, value)
    if changes:
        worker.save(update_fields=list(changes))
        roster_changed()
    return worker


def _disconnect_on_commit(*, channel_name: str, message: str) -> None:
    """After commit, tell the agent link on `channel_name` to end (AgentConsumer.agent_revoked)."""
    def send():
        async_to_sync(get_channel_layer().send)(channel_name, {"type": "agent.revoked", "message": message})

    # robust: the revocation stands even if the layer is down; the token is refused from now on.
    transaction.on_commit(send, robust=True)


def worker_revoke_and_disconnect(*, worker_id) -> bool:
    """Revoke the worker's token and, after commit, end its agent link: a job in flight fails
    over as on a drop. Locks the worker row, so a hello in progress either lands first (and is
    disconnected) or after (and is refused). False if it was already revoked."""
    with transaction.atomic():
        channel = Worker.objects.select_for_update().values_list("channel_name", flat=True).get(id=worker_id)
        revoked = worker_revoke(worker_id=worker_id)
        if channel:
            _disconnect_on_commit(channel_name=channel, message="This worker's token was revoked by its operator.")
    return revoked


def worker_token_rotate_and_disconnect(*, worker_id) -> str:
    """Issue a new token (a revoked worker is reinstated with it) and, after commit, end the link
    of the agent that used the old one. Locks the worker row as above."""
    with transaction.atomic():
        channel = Worker.objects.select_for_update().values_list("channel_name", flat=True).get(id=worker_id)
        raw_token = worker_token_rotate(worker_id=worker_id)
        if channel:
            _disconnect_on_commit(channel_name=channel, message="This worker's token was replaced by a new one; "
                                                                "restart the agent with the new token.")
    return raw_token
