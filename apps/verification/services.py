"""Re-execution of verified jobs: the draw, a validator's claim and answer, and the verdict.

The flow (docs/verification.md): `jobs_sample` draws among completed verified jobs; a drawn job
gets a Validation, which `validator_claim` assigns to an idle worker of another operator serving
the same model digest; its answer is compared (compare.py) by `validation_record`; then
`verdict_apply` decides: an answer that stands passes; a first mismatch (or a sampled answer the
validator could not reproduce: inconclusive) asks a second validator (of yet another operator);
two mismatches are a proven fault: the bond is slashed once per job
(part to the challenger, or else to the first validator's operator; the rest burned), the
worker's reputation is halved and the job is marked failed. Every step is idempotent: a task run
twice, or resumed after a crash, changes nothing more.
"""

import hashlib
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.credits.ledger import InsufficientFunds
from apps.credits.services import validator_pay_for_reexecution
from apps.marketplace.models import Job
from apps.marketplace.network import network_event_publish
from apps.staking.services import bond_slash
from apps.workers.metrics import decayed, worker_outcome_record
from apps.workers.roster import roster_changed
from apps.workers.services import worker_claim_first, worker_release

from . import challenges
from .compare import Comparison, Evidence, compare
from .embedding_checks import embed_assign_frames, embedding_comparison
from .models import Challenge, Validation
from .sampling import drawn, sample_rate
from .selectors import bond_slashable, validator_candidates

logger = logging.getLogger(__name__)
SAMPLE_BATCH = 500


def jobs_sample(*, limit: int = SAMPLE_BATCH) -> list:
    """Draw, for each completed verified job not drawn for yet, whether it is re-executed; the
    ids of the Validations created for the drawn ones. Concurrent samplers skip each other's rows."""
    with transaction.atomic():
        jobs = list(Job.objects.select_for_update(of=("self",), skip_locked=True).select_related("worker")
                    .filter(verification_status=Job.Verification.AWAITING).order_by("finished_at")[:limit])
        now = timezone.now()
        sampled, skipped = [], []
        for job in jobs:
            reputation = decayed(job.worker.reputation, job.worker.reputation_updated_at, now) if job.worker else 0.0
            rate = sample_rate(tier_rate=settings.PEER_VERIFY_SAMPLE_RATE.get(job.tier, 0.0),
                               rate_max=settings.PEER_VERIFY_SAMPLE_RATE_MAX, reputation=reputation)
            (sampled if drawn(rate) else skipped).append(job.id)
        Job.objects.filter(id__in=skipped).update(verification_status=Job.Verification.NOT_SAMPLED)
        Job.objects.filter(id__in=sampled).update(verification_status=Job.Verification.PENDING)
        created = Validation.objects.bulk_create(
            [Validation(job_id=job_id, reason=Validation.Reason.SAMPLED) for job_id in sampled])
    return [validation.id for validation in created]


@dataclass(frozen=True)
class Assignment:
    validation_id: object
    job_id: object
    worker_id: object
    channel: str
    frame: dict | None  # the validate.assign to send (a generation job)
    chunks: list[dict] | None = None  # an embedding job's embed.assign frames, sent in turn


def validator_claim(*, validation_id) -> Assignment | None:
    """Claim an idle validator for a pending validation and mark it running: the assignment to
    send, or None (not pending any more, or no validator idle now: it stays pending)."""
    from worker import protocol

    with transaction.atomic():
        validation = Validation.objects.select_for_update(of=("self",)).select_related("job__worker").get(
            id=validation_id)
        if validation.state != Validation.State.PENDING:
            return None
        job = validation.job
        earlier = Validation.objects.filter(job=job, round__lt=validation.round, validator__isnull=False,
                                            challenge=validation.challenge)
        candidates = validator_candidates(
            job=job, exclude_operator_ids=set(earlier.values_list("validator__operator_id", flat=True)),
            exclude_worker_ids=set(validation.validators_tried))
        # The routing claim: the first still idle and serving the digest, in one statement.
        claimed = worker_claim_first(ranked=candidates, job_id=job.id)
        if claimed is None:
            return None
        worker_id, channel = claimed
        model = next(model for candidate, model in candidates if str(candidate) == str(worker_id))
        validation.state, validation.validator_id, validation.started_at = \
            Validation.State.RUNNING, worker_id, timezone.now()
        validation.save(update_fields=["state", "validator", "started_at"])
        if job.kind == Job.Kind.EMBEDDING:
            return Assignment(validation.id, job.id, worker_id, channel, None,
                              chunks=embed_assign_frames(job=job, model=model))
        frame = protocol.validate_assign(
            job_id=str(job.id), model=model["id"], model_digest=job.model_digest, params=job.params,
            output=job.output_text, messages=job.messages if job.is_chat else None, prompt=job.raw_prompt)
        return Assignment(validation.id, job.id, worker_id, channel, frame)


def validation_attempt_failed(*, validation_id, worker_id, why: str) -> Validation:
    """The validator did not answer (refused, failed, went offline, timed out): let it go and put
    the validation back in line for another, or give up after PEER_VERIFY_MAX_ATTEMPTS."""
    with transaction.atomic(durable=True):
        validation = Validation.objects.select_for_update().get(id=validation_id)
        worker_release(worker_id=worker_id, job_id=validation.job_id)
        if validation.state != Validation.State.RUNNING or str(validation.validator_id) != str(worker_id):
            return validation
        logger.info("validation %s: validator %s gave no answer: %s", validation_id, worker_id, why)
        validation.validators_tried = [*validation.validators_tried, str(worker_id)]
        validation.validator_id, validation.started_at = None, None
        undecided = len(validation.validators_tried) >= settings.PEER_VERIFY_MAX_ATTEMPTS
        validation.state = Validation.State.UNDECIDED if undecided else Validation.State.PENDING
        validation.detail = f"no answer from {len(validation.validators_tried)} validator(s); last: {why}"[:300]
        if undecided:
            validation.finished_at = timezone.now()
        validation.save(update_fields=["validators_tried", "validator", "started_at", "state", "detail",
                                       "finished_at"])
    if undecided:
        verdict_apply(validation_id=validation_id)
    return validation


def validation_record(*, validation_id, worker_id, done: dict) -> Validation | None:
    """Compare the validator's answer (validate.done; for an embedding job, its vectors for every
    input: {"model_digest", "data"}) with the job's, record the outcome, pay the validator and
    apply the verdict: the confirming Validation to run next, or None. A stale answer (from a
    validator no longer assigned) is ignored."""
    with transaction.atomic(durable=True):
        validation = Validation.objects.select_for_update(of=("self",)).select_related("job").get(id=validation_id)
        if validation.state != Validation.State.RUNNING or str(validation.validator_id) != str(worker_id):
            return None
        job = validation.job
        stale = done.get("model_digest") != job.model_digest
        if not stale:
            comparison, validation.validator_output_sha256 = _comparison(job, done)
            validation.state, validation.outcome, validation.detail = \
                Validation.State.DONE, comparison.outcome, comparison.reason[:300]
            validation.mean_logprob, validation.lowest_logprob = comparison.mean_logprob, comparison.lowest_logprob
            validation.lowest_similarity = comparison.lowest_similarity
            validation.end_logprob = done.get("end_logprob")
            validation.finished_at = timezone.now()
            validation.save()
            if job.kind == Job.Kind.EMBEDDING:  # its consumer keeps an embedder claimed across chunks
                worker_release(worker_id=worker_id, job_id=job.id)
    if stale:
        validation_attempt_failed(validation_id=validation_id, worker_id=worker_id,
                                  why=f"it ran digest {done.get('model_digest')}, not {job.model_digest}")
        return None
    validator_pay(validation=validation)
    return verdict_apply(validation_id=validation_id)


def _comparison(job: Job, done: dict) -> tuple[Comparison, str]:
    """The comparison of the validator's answer with the job's, and the sha256 of its output."""
    if job.kind == Job.Kind.EMBEDDING:
        return embedding_comparison(job=job, vectors=done["data"])
    comparison = compare(claimed=job.output_text, claimed_finish=job.finish_reason,
                         temperature=float(job.params.get("temperature") or 0.0),
                         evidence=Evidence(output=done["output"], token_logprobs=done["token_logprobs"],
                                           end_logprob=done.get("end_logprob"),
                                           sampled_fit=done.get("sampled_fit")))
    return comparison, hashlib.sha256(done["output"].encode()).hexdigest()


def validator_pay(*, validation: Validation) -> bool:
    """Pay the validator for its re-execution (docs/money.md), once; False while the treasury
    cannot cover it (the resume task tries again)."""
    if validation.paid or validation.validator_id is None:
        return validation.paid
    try:
        validator_pay_for_reexecution(validator=validation.validator, job_price=validation.job.charged_amount or 0,
                                      reference=validation.reference)
    except InsufficientFunds:
        logger.warning("validation %s: the treasury cannot pay its validator yet", validation.id)
        return False
    Validation.objects.filter(id=validation.id).update(paid=True)
    validation.paid = True
    return True


def verdict_apply(*, validation_id) -> Validation | None:
    """Decide what a finished validation means for its job; the confirming Validation to run
    when a first one found a mismatch, else None. Idempotent."""
    validation = Validation.objects.select_related("job__worker", "challenge", "validator").get(id=validation_id)
    job = validation.job
    if validation.state == Validation.State.UNDECIDED:
        _job_verdict(job, Job.Verification.UNDECIDED, validation.challenge, Challenge.State.UNDECIDED)
        return None
    if validation.state != Validation.State.DONE:
        return None
    if validation.outcome in ("match", "plausible"):
        if _job_verdict(job, Job.Verification.PASSED, validation.challenge, Challenge.State.REJECTED):
            worker_outcome_record(worker_id=job.worker_id, outcome="verification_passed")
        return None
    if validation.round == 1:  # a mismatch, or a sampled answer the validator could not reproduce
        confirming, _ = Validation.objects.get_or_create(
            job=job, round=2, challenge=validation.challenge,
            defaults={"reason": Validation.Reason.CONFIRMATION})
        return confirming if confirming.state == Validation.State.PENDING else None
    first = Validation.objects.select_related("validator").filter(
        job=job, round=1, challenge=validation.challenge).first()
    if validation.outcome == "mismatch" and first is not None and first.outcome == "mismatch":
        _fault_proven(job, first=first, confirming=validation)
    else:  # an inconclusive round: no proof either way, and nobody is slashed on a doubt
        _job_verdict(job, Job.Verification.UNDECIDED, validation.challenge, Challenge.State.UNDECIDED)
    return None


def _fault_proven(job: Job, *, first: Validation, confirming: Validation) -> None:
    """Two validators' runs disagree with the job's answer: slash (once per job), halve the
    worker's reputation (once, with the job's move to failed) and settle a challenge."""
    challenger = confirming.challenge.challenger if confirming.challenge else first.validator.operator
    amount = min(settings.PEER_SLASH_AMOUNT, bond_slashable(worker_id=job.worker_id))
    slash = None
    if amount > 0:
        slash = bond_slash(worker=job.worker, amount=amount, challenger=challenger,
                           idempotency_key=f"slash:job:{job.id}",
                           reason=f"job {job.id}: two validators' re-executions disagree with its answer")
    if _job_verdict(job, Job.Verification.FAILED, confirming.challenge, Challenge.State.UPHELD):
        if slash is not None:
            network_event_publish("verification.slash", job_id=str(job.id), worker_id=str(job.worker_id),
                                  amount=slash.amount, burned=slash.burned, to_challenger=slash.to_challenger)
        worker_outcome_record(worker_id=job.worker_id, outcome="verification_failed")
        roster_changed()  # a smaller bond and reputation may take it off the verified roster
        logger.warning("job %s: fault proven against worker %s; slashed %s", job.id, job.worker_id, amount)


def _job_verdict(job: Job, status: str, challenge: Challenge | None, challenge_state: str) -> bool:
    """Move the job to `status` (True), and settle its challenge; False when the verdict was
    applied before. From pending only, except a proven fault: it overrides an earlier pass (a
    challenge's validators may find what a sampled re-execution did not) and is final."""
    with transaction.atomic(durable=True):
        locked = Job.objects.select_for_update(of=("self",)).only("verification_status").get(id=job.id)
        moved = locked.verification_status == Job.Verification.PENDING or (
            status == Job.Verification.FAILED and locked.verification_status != Job.Verification.FAILED)
        if moved:
            Job.objects.filter(id=job.id).update(verification_status=status)
            network_event_publish("verification.verdict", job_id=str(job.id), worker_id=str(job.worker_id),
                                  model=job.public_model, status=status)
        if challenge is not None:
            challenges.challenge_settle_in_atomic(challenge_id=challenge.id, state=challenge_state)
    return moved
