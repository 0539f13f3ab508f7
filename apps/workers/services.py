"""Worker registry writes: registration, the agent link's life cycle, claiming for a job."""

import hashlib
import secrets

from django.db import transaction
from django.utils import timezone

from .models import TIERS, Worker

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
    return worker, raw_token


def worker_token_rotate(*, worker_id) -> str:
    """Issue a new token (the old one stops working) and un-revoke the worker."""
    raw_token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    Worker.objects.filter(id=worker_id).update(token_hash=worker_token_hash(raw_token),
                                               token_prefix=raw_token[:10], revoked_at=None)
    return raw_token


def worker_connect(*, raw_token: str, hello: dict, channel_name: str) -> tuple[Worker, str]:
    """Bring a worker online on this agent link; returns it and the channel of the link it
    replaced ("" if none): a newer link with the same token replaces an older one."""
    worker = Worker.objects.filter(token_hash=worker_token_hash(raw_token)).first()
    if worker is None:
        raise WorkerAuthError("bad_token", "Unknown worker token.")
    if worker.revoked_at is not None:
        raise WorkerAuthError("revoked", "This worker's token was revoked.")
    now = timezone.now()
    with transaction.atomic():
        previous = Worker.objects.select_for_update().values_list("channel_name", flat=True).get(id=worker.id)
        Worker.objects.filter(id=worker.id).update(
            status=Worker.Status.IDLE, channel_name=channel_name, current_job_id=None,
            models_served=hello["models"], hardware=hello.get("hardware") or {},
            agent_version=hello["agent_version"][:40], connected_at=now, last_seen_at=now)
    worker.refresh_from_db()
    return worker, previous


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


def worker_release(*, worker_id, job_id) -> bool:
    """Make the worker idle again after `job_id`; a no-op if it already moved on or went offline."""
    return Worker.objects.filter(id=worker_id, status=Worker.Status.BUSY, current_job_id=job_id).update(
        status=Worker.Status.IDLE, current_job_id=None, last_job_at=timezone.now()) == 1


def worker_revoke(*, worker_id) -> bool:
    return Worker.objects.filter(id=worker_id, revoked_at__isnull=True).update(revoked_at=timezone.now()) == 1


def workers_reap_silent(*, silence_seconds: float) -> list:
    """Offline every worker not heard from in `silence_seconds`; returns the jobs they held."""
    cutoff = timezone.now() - timezone.timedelta(seconds=silence_seconds)
    stale = list(Worker.objects.exclude(status=Worker.Status.OFFLINE).filter(last_seen_at__lt=cutoff)
                 .values_list("id", "channel_name"))
    return [job for worker_id, channel in stale
            if (job := worker_disconnect(worker_id=worker_id, channel_name=channel))]
