"""How a job's verification reads in its proof and in challenge responses."""

from datetime import timedelta

from django.conf import settings

from apps.marketplace.embedding_proofs import chunks_signed
from apps.marketplace.models import Job
from apps.staking.models import Slash

from .models import Challenge, Validation
from .selectors import challenges_for_job, validations_for_job


def _when(value) -> str | None:
    return value.isoformat() if value else None


def verification_status(job: Job) -> str:
    """The job's verification status; for jobs the sampler never draws for, why not."""
    if job.verification_status:
        return job.verification_status
    signed = bool((job.commitment or {}).get("signature")) or chunks_signed((job.commitment or {}).get("chunks"))
    return "not_applicable" if signed else "unsigned"


def validation_body(validation: Validation) -> dict:
    return {"id": str(validation.id), "reason": validation.reason, "round": validation.round,
            "state": validation.state,
            "validator_id": str(validation.validator_id) if validation.validator_id else None,
            "outcome": validation.outcome or None, "detail": validation.detail or None,
            "mean_logprob": validation.mean_logprob, "lowest_logprob": validation.lowest_logprob,
            "end_logprob": validation.end_logprob, "lowest_similarity": validation.lowest_similarity,
            "validator_output_sha256": validation.validator_output_sha256 or None,
            "challenge_id": str(validation.challenge_id) if validation.challenge_id else None,
            "finished_at": _when(validation.finished_at)}


def challenge_body(challenge: Challenge) -> dict:
    return {"object": "peer.challenge", "id": str(challenge.id), "job_id": str(challenge.job_id),
            "state": challenge.state, "bond_micro_usdc": challenge.bond, "created_at": _when(challenge.created_at),
            "decided_at": _when(challenge.decided_at)}


def slash_body(slash: Slash | None) -> dict | None:
    if slash is None:
        return None
    return {"amount": slash.amount, "burned": slash.burned, "to_challenger": slash.to_challenger,
            "challenger_id": slash.challenger_id, "created_at": _when(slash.created_at)}


def verification_record(job: Job) -> dict:
    """The `verification` object of a proof: status, each re-execution, challenges, the slash."""
    record = {"status": verification_status(job)}
    if job.tier != "verified" or job.finished_at is None:
        return record
    record["challenge_window_closes_at"] = _when(
        job.finished_at + timedelta(seconds=settings.PEER_CHALLENGE_WINDOW_SECONDS))
    record["validations"] = [validation_body(v) for v in validations_for_job(job_id=job.id)]
    record["challenges"] = [challenge_body(c) for c in challenges_for_job(job_id=job.id)]
    record["slash"] = slash_body(Slash.objects.filter(idempotency_key=f"slash:job:{job.id}").first())
    return record
