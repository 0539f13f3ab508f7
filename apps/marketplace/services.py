"""Job writes: create (quote + hold), start, complete (usage, commitment, settle), fail (refund);
for generation jobs and, with their own quote and completion, embedding jobs.

Lock order everywhere: the job row first, then ledger accounts by id (inside ledger_post); a
job's creation may lock the worker it claims before the user's accounts.
"""

from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from apps.accounts.selectors import api_key_authenticate, api_key_touch, api_key_well_formed
from apps.accounts.services import api_key_hash
from apps.credits.pricing import job_price
from apps.credits.services import InsufficientFunds, PostingRefused, credits_hold_in_atomic, credits_settle_in_atomic
from apps.workers.roster import price_ceiling
from apps.workers.models import CatalogueModel
from apps.workers.services import worker_claim_best, worker_release, workers_claimable
from peercycles.sql import instance_update
from worker.commitment import commitment_hash, commitment_inputs, sha256_hex, signature_problem
from worker.embedding_commitment import vectors_base64

from . import job_sql
from .errors import ApiError
from .models import Job
from .requests import ChatRequest, EmbeddingRequest
from .selectors import catalogue_get, jobs_waiting_count
from .tokens import count_embedding_tokens, count_tokens
from .embedding_proofs import chunks_signed
from .vectors import inputs_text


class InsufficientCredits(Exception):
    def __init__(self, price: int, available: int):
        super().__init__(f"price {price} > available {available}")
        self.price, self.available = price, available


@dataclass(frozen=True)
class Quote:
    prompt_tokens: int
    amount: int
    price_ceiling: int


def catalogue_entry_open(*, name: str) -> CatalogueModel:
    """The active catalogue entry called `name` (ApiError 404 if none). Whether its queue has room
    is counted once per request, by the job's insert (_job_create_held): a count here as well
    cost every request a statement for an earlier 429 (docs/benchmarks.md)."""
    entry = catalogue_get(name=name)
    if entry is None:
        raise _model_not_found(name)
    return entry


def _model_not_found(name: str) -> ApiError:
    return ApiError(404, f"The model '{name}' does not exist on this network; GET /v1/models lists them.",
                    param="model", code="model_not_found")


def caller_and_entry(*, raw_key: str, name: str) -> tuple:
    """(the API key's user, catalogue_entry_open(name)) for a job request, or (None, None) when
    the key is not valid: a bad key is answered before the model is looked at. One statement on
    PostgreSQL (job_sql.caller_and_entry_row)."""
    if not _hand_written():
        user = api_key_authenticate(raw_key=raw_key)
        if user is None:
            return None, None
        return user, catalogue_entry_open(name=name)
    found = job_sql.caller_and_entry_row(key_hash=api_key_hash(raw_key), name=name) \
        if api_key_well_formed(raw_key) else None
    if found is None:
        return None, None
    key_id, last_used_at, user, entry = found
    api_key_touch(key_id=key_id, last_used_at=last_used_at)
    if entry is None:
        raise _model_not_found(name)
    return user, entry


def _hand_written() -> bool:
    return connection.vendor in job_sql.HAND_WRITTEN_VENDORS


def job_quote(*, chat: ChatRequest, entry: CatalogueModel) -> Quote:
    prompt_tokens, _ = count_tokens(chat.prompt_text(), tokenizer_path=entry.tokenizer_path, add_bos=True)
    if prompt_tokens + chat.max_tokens > entry.context_length:
        raise ApiError(400, f"This model's context is {entry.context_length} tokens; the messages take "
                       f"{prompt_tokens} and max_tokens asks for {chat.max_tokens}.",
                       param="messages", code="context_length_exceeded")
    ceiling = price_ceiling(entry=entry, tier=chat.tier, max_price=chat.route.max_price_per_token)
    amount = job_price(base=settings.PEER_TIER_BASE_PRICE[chat.tier], per_token=ceiling,
                       prompt_tokens=prompt_tokens, completion_tokens=chat.max_tokens)
    return Quote(prompt_tokens=prompt_tokens, amount=amount, price_ceiling=ceiling)


def job_create(*, user, chat: ChatRequest, entry: CatalogueModel) -> Job:
    """Quote the job and hold its price from the user's credits, atomically.

    Raises InsufficientCredits (nothing written) when the credits do not cover the quote.
    """
    return _job_create(user=user, chat=chat, entry=entry)


def job_create_and_claim(*, user, chat: ChatRequest, entry: CatalogueModel) -> tuple[Job, tuple | None]:
    """job_create and, in the same transaction, the claim of the best idle eligible worker with
    the job's start on it (job_claim_worker): (the job, (worker id, its channel, the model entry
    it serves the job with) or None when none was free; the relay then routes the job as any).
    One database call and one commit where the relay made two of each. Raises as job_create."""
    claimed = None

    def claim(job: Job) -> None:
        nonlocal claimed
        claimed = None  # a transaction run again (_job_create_held) claims again
        found = job_claim_worker(job=job, entry=entry, route=chat.route, exclude=set())
        if found is None:
            return
        worker_id, channel, model, started = found
        if started:
            claimed = (worker_id, channel, model)
        else:  # priced above the job's ceiling after all (the ranking leaves those out): let it go
            worker_release(worker_id=worker_id, job_id=job.id)

    return _job_create(user=user, chat=chat, entry=entry, then=claim), claimed


def _job_create(*, user, chat: ChatRequest, entry: CatalogueModel, then=None) -> Job:
    quote = job_quote(chat=chat, entry=entry)
    return _job_create_held(
        user=user, quote=quote, then=then, public_model=entry.name, served_model=entry.served_model,
        tier=chat.tier, stream=chat.stream, messages=chat.messages, raw_prompt=chat.prompt, params=chat.params(),
        proof_public=chat.public_proof,
        seed=chat.seed, prompt_sha256=sha256_hex(chat.prompt_text()))


def _job_create_held(*, user, quote: Quote, then=None, **fields) -> Job:
    """Create the job, call `then(job)` when given (job_create_and_claim's claim), and hold the
    quote, in one durable transaction (the claimed worker's row, then the user's accounts, are
    locked until it commits). Raises InsufficientCredits, with nothing written, when the credits
    do not cover it, and ApiError 429 when PEER_QUEUE_LIMIT jobs already wait.

    The hold is the transaction's last statement and carries its COMMIT (the user's accounts
    locked for no round trip: ledger_post_committing); when it would not go through (a new
    user's first hold, credits short) the transaction runs again with a plain hold, which
    creates the accounts or says what is short."""
    return _committing_else_plain(_job_create_held_once, user=user, quote=quote, then=then, **fields)


def _job_create_held_once(*, user, quote: Quote, then, commits: bool, **fields) -> Job:
    budget = settings.PEER_QUEUE_TIMEOUT + settings.PEER_JOB_TIMEOUT + 60
    with transaction.atomic(durable=True):
        job = Job(user=user, prompt_tokens=quote.prompt_tokens, hold_amount=quote.amount,
                  price_ceiling=quote.price_ceiling, deadline_at=timezone.now() + timezone.timedelta(seconds=budget),
                  **fields)
        # Counted without a lock: a burst may pass the limit by the jobs being created at that
        # moment (with a pool, at most PEER_DB_POOL_SIZE per node process). The catalogue
        # row's lock this took before made every job of a model wait for the one before it to
        # commit, which cost 9% of the throughput at 64 clients once the claim joined the
        # transaction (docs/benchmarks.md).
        if _job_insert_counting_queue(job) >= settings.PEER_QUEUE_LIMIT:
            transaction.set_rollback(True)
            raise ApiError(429, f"{fields['public_model']} ({fields['tier']}) has {settings.PEER_QUEUE_LIMIT} "
                           "requests waiting for a worker; retry shortly.", code="queue_full",
                           headers={"Retry-After": "5"})
        if then is not None:  # before the hold: the user's accounts stay locked for less time
            then(job)
        try:
            credits_hold_in_atomic(user=user, amount=quote.amount, reference=job.reference, commits=commits)
        except InsufficientFunds as exc:
            transaction.set_rollback(True)  # and with it anything `then` wrote
            raise InsufficientCredits(quote.amount, exc.available) from None
    return job


def _job_insert_counting_queue(job: Job) -> int:
    """Insert the job; return how many jobs of its model and tier waited before it (one
    statement on PostgreSQL)."""
    if _hand_written():
        return job_sql.job_insert_counting_queue(job)
    waiting = jobs_waiting_count(public_model=job.public_model, tier=job.tier)
    job.save(force_insert=True)
    return waiting


def job_start(*, job_id, worker_id, model_digest: str, price_per_token: int) -> bool:
    """Record the worker now running the job (again, after a failover) and the price per token
    it charges (never above the job's price ceiling). False if the job ended."""
    if _hand_written():
        return job_sql.job_start_row(job_id=job_id, worker_id=worker_id, model_digest=model_digest,
                                     price_per_token=price_per_token, now=timezone.now())
    return Job.objects.filter(id=job_id, hold_state=Job.HoldState.HELD, price_ceiling__gte=price_per_token).update(
        status=Job.Status.RUNNING, worker_id=worker_id, model_digest=model_digest, price_per_token=price_per_token,
        started_at=timezone.now()) == 1


def job_claim_worker(*, job: Job, entry: CatalogueModel, route, exclude: set, only: set | None = None
                     ) -> tuple | None:
    """Claim for the job the best idle eligible worker not in `exclude` (and in `only`, when
    given) and start the job on it: (worker id, its channel, the model entry it serves the job
    with, started), or None when none is free. `started` is False when the job is no longer held
    (settled elsewhere meanwhile) or the price came above its ceiling: the worker stays claimed,
    for the caller to release. On PostgreSQL one statement for both."""
    if _hand_written():
        ranked = workers_claimable(entry=entry, tier=job.tier, route=route, price_ceiling=job.price_ceiling,
                                   exclude=exclude, only=only)
        claimed = job_sql.worker_claim_and_job_start(ranked=ranked, job_id=job.id, now=timezone.now())
        if claimed is None:
            return None
        worker_id, channel, started = claimed
        model = next(model for wid, model, _ in ranked if wid == str(worker_id))
        return worker_id, channel, model, started
    claimed = worker_claim_best(entry=entry, tier=job.tier, route=route, price_ceiling=job.price_ceiling,
                                job_id=job.id, exclude=exclude, only=only)
    if claimed is None:
        return None
    worker_id, channel, model, price = claimed
    return worker_id, channel, model, job_start(job_id=job.id, worker_id=worker_id, model_digest=model["digest"],
                                                price_per_token=price)


class CommitmentRejected(Exception):
    """A verified job's worker did not sign the commitment the node computed (no signature, a
    bad one, or one over other output): the job is not settled as done."""


def job_complete(*, job_id, output_text: str, finish_reason: str, model_digest: str,
                 entry: CatalogueModel | None = None, signature: str | None = None,
                 claimed_commitment: str | None = None) -> Job:
    """Count usage, compute the commitment, check the worker's signature of it, capture the
    actual price and release the rest.

    `entry` is the job's catalogue entry when the caller has it (read otherwise). `signature`:
    the worker's, from its job.done (base64 Ed25519 over the commitment, worker/commitment.py);
    `claimed_commitment` the hash it says it signed, for the error message. A verified job
    without a valid signature raises CommitmentRejected, settling nothing (a cancelled one,
    which never got a job.done, is charged for what was delivered). Locks the job row, then the
    ledger accounts. Settling twice is a no-op that returns the job.
    """
    def settle(job: Job) -> tuple[int, dict]:
        catalogue = entry if entry is not None else CatalogueModel.objects.filter(name=job.public_model).first()
        completion_tokens, usage_source = count_tokens(output_text, add_bos=False,
                                                       tokenizer_path=catalogue.tokenizer_path if catalogue else "")
        completion_tokens = min(completion_tokens, job.params["max_tokens"])
        charge = min(job.hold_amount, job_price(
            base=settings.PEER_TIER_BASE_PRICE[job.tier], per_token=job.price_per_token or 0,
            prompt_tokens=job.prompt_tokens, completion_tokens=completion_tokens))
        inputs = commitment_inputs(model_id=job.served_model, model_digest=model_digest, seed=job.seed,
                                   params=job.params, prompt=job.prompt_text(), output=output_text)
        commitment = commitment_hash(inputs)
        key = job.worker.signing_key if job.worker else ""
        problem = signature_problem(public_key=key, signature=signature, commitment=commitment,
                                    claimed=claimed_commitment)
        signed = problem is None
        if job.tier == "verified" and finish_reason != "cancelled" and not signed:
            raise CommitmentRejected(problem)
        # A signed verified answer goes to the sampler's draw (apps/verification/services.py).
        awaiting = job.tier == "verified" and finish_reason != "cancelled" and signed
        return charge, {"completion_tokens": completion_tokens, "output_text": output_text,
                        "finish_reason": finish_reason, "model_digest": model_digest,
                        "verification_status": Job.Verification.AWAITING if awaiting else Job.Verification.NONE,
                        "commitment": {"inputs": inputs, "hash": commitment, "usage_source": usage_source,
                                       "signature": signature if signed else None,
                                       "worker_public_key": key if signed else None}}

    return _job_capture(job_id=job_id, settle=settle)


def _job_capture(*, job_id, settle) -> Job:
    """Capture what `settle(job)` charges of the job's hold (the 70/24/6 split), release the rest
    and record it completed with the fields `settle` returns as well ((charge, fields)). Locks the
    job row, then the ledger accounts; a no-op returning the job when it was settled already.

    The posting is the transaction's last statement and carries its COMMIT, as the hold's in
    _job_create_held: when it would not go through (the worker's first earnings, an account to
    create) the transaction runs again with a plain posting."""
    return _committing_else_plain(_job_capture_once, job_id=job_id, settle=settle)


def _committing_else_plain(run_once, **kwargs):
    """Run a transaction whose last posting carries its COMMIT (`run_once(commits=True)`); when
    that posting refused, writing nothing, run it again with a plain posting, which creates
    what is missing or raises what is wrong."""
    try:
        return run_once(commits=True, **kwargs)
    except PostingRefused:
        return run_once(commits=False, **kwargs)


def _job_capture_once(*, job_id, settle, commits: bool) -> Job:
    with transaction.atomic(durable=True):
        job = _job_locked(job_id)
        if job.hold_state != Job.HoldState.HELD:
            return job
        charge, fields = settle(job)
        job.status, job.hold_state, job.charged_amount = Job.Status.COMPLETED, Job.HoldState.CAPTURED, charge
        job.finished_at = timezone.now()
        for name, value in fields.items():
            setattr(job, name, value)
        _job_save(job, ["status", "hold_state", "charged_amount", "finished_at", *fields])
        credits_settle_in_atomic(user=job.user, held_amount=job.hold_amount, charge=charge,
                                 worker=job.worker, reference=job.reference, commits=commits)
    return job


def _job_locked(job_id) -> Job:
    """The job with its row locked, its worker and user loaded (what a settlement reads)."""
    if _hand_written():
        return job_sql.job_locked(job_id=job_id)
    return Job.objects.select_for_update(of=("self",)).select_related("worker", "user").get(id=job_id)


def _job_save(job: Job, names: list[str]) -> None:
    if _hand_written():
        instance_update(job, names)
    else:
        job.save(update_fields=names)


def job_fail(*, job_id, code: str, message: str) -> Job:
    """Refund the whole hold and mark the job failed. A no-op on a job already settled."""
    with transaction.atomic(durable=True):
        job = _job_locked(job_id)
        if job.hold_state != Job.HoldState.HELD:
            return job
        credits_settle_in_atomic(user=job.user, held_amount=job.hold_amount, charge=0, worker=None,
                                 reference=job.reference)
        job.status, job.hold_state, job.charged_amount = Job.Status.FAILED, Job.HoldState.RELEASED, 0
        job.error_code, job.error_message, job.finished_at = code[:50], message[:500], timezone.now()
        _job_save(job, ["status", "hold_state", "charged_amount", "error_code", "error_message", "finished_at"])
    return job


def jobs_reap_stale() -> int:
    """Refund every job past its deadline that still holds credits (e.g. its node process died)."""
    stale = Job.objects.filter(hold_state=Job.HoldState.HELD, deadline_at__lt=timezone.now()).values_list("id", flat=True)
    count = 0
    for job_id in list(stale):
        if job_fail(job_id=job_id, code="timeout", message="The job passed its deadline.").error_code == "timeout":
            count += 1
    return count


# --- Embedding jobs ----------------------------------------------------------------------------

@dataclass(frozen=True)
class EmbeddingQuote(Quote):
    usage_source: str = "tokenizer"


def embedding_quote(*, embedding: EmbeddingRequest, entry: CatalogueModel) -> EmbeddingQuote:
    """The price of embedding every input: the tier's base plus the dearest offer per token of
    the inputs' tokens, counted here with the model's tokenizer. 400 for what the model cannot do."""
    if entry.kind != CatalogueModel.Kind.EMBEDDING:
        raise ApiError(400, f"{entry.name} is a chat model; /v1/embeddings needs an embedding model "
                       "(GET /v1/models shows each model's kind).", param="model", code="unsupported_model")
    if embedding.dimensions is not None and embedding.dimensions != entry.dimensions:
        # MiniLM was not trained to be truncated (as Matryoshka models are): a shorter vector
        # would be a different, worse embedding, so only the model's own length is served.
        message = (f"{entry.name} returns {entry.dimensions}-dimensional vectors and cannot shorten them; "
                   f"omit 'dimensions' or send {entry.dimensions}." if entry.dimensions else
                   f"{entry.name} cannot shorten its vectors; omit 'dimensions'.")
        raise ApiError(400, message, param="dimensions", code="unsupported_dimensions")
    counted = count_embedding_tokens(embedding.inputs, tokenizer_path=entry.tokenizer_path)
    room = entry.context_length - counted.special
    for index, tokens in enumerate(counted.tokens):
        if tokens > room:
            raise ApiError(400, f"input[{index}] is {tokens} tokens; {entry.name} reads at most {room} "
                           f"tokens of text per input. Split the text; nothing is cut silently.",
                           param="input", code="context_length_exceeded")
    prompt_tokens = sum(counted.tokens)
    ceiling = price_ceiling(entry=entry, tier=embedding.tier, max_price=embedding.route.max_price_per_token)
    amount = job_price(base=settings.PEER_EMBEDDING_BASE_PRICE[embedding.tier], per_token=ceiling,
                       prompt_tokens=prompt_tokens, completion_tokens=0)
    return EmbeddingQuote(prompt_tokens=prompt_tokens, amount=amount, price_ceiling=ceiling,
                          usage_source=counted.source)


def embed_job_create(*, user, embedding: EmbeddingRequest, entry: CatalogueModel) -> Job:
    """Quote the embedding job and hold its price, atomically; see _job_create_held."""
    quote = embedding_quote(embedding=embedding, entry=entry)
    return _job_create_held(
        user=user, quote=quote, kind=Job.Kind.EMBEDDING, public_model=entry.name,
        served_model=entry.served_model, tier=embedding.tier, inputs=embedding.inputs,
        params={"usage_source": quote.usage_source}, seed=0,
        prompt_sha256=sha256_hex(inputs_text(embedding.inputs)))


def embed_job_complete(*, job_id, vectors: list[list[float]], model_digest: str, chunks: list[dict] | None = None,
                       public_key: str = "") -> Job:
    """Capture the price for the node's token count at the serving worker's offer, release the
    rest, and commit to the vectors. `chunks`: each chunk's proof, the worker's signature checked
    (embedding_proofs.chunk_proof), signed by `public_key`. Locks the job row, then the ledger
    accounts; a no-op on a job already settled. A verified job's vectors are kept (as a chat
    answer's text is) for validators to compare with; others' only as the commitment's hash."""
    # The output is the base64 of the float32 vectors: exact, where printed decimals are not.
    output = vectors_base64(vectors)
    signed = chunks_signed(chunks)

    def settle(job: Job) -> tuple[int, dict]:
        charge = min(job.hold_amount, job_price(
            base=settings.PEER_EMBEDDING_BASE_PRICE[job.tier], per_token=job.price_per_token or 0,
            prompt_tokens=job.prompt_tokens, completion_tokens=0))
        inputs = commitment_inputs(model_id=job.served_model, model_digest=model_digest, seed=job.seed,
                                   params={}, prompt=inputs_text(job.inputs), output=output)
        # A verified job signed chunk by chunk goes to the sampler's draw (apps/verification).
        awaiting = job.tier == "verified" and signed
        return charge, {"completion_tokens": 0, "finish_reason": "stop", "model_digest": model_digest,
                        "output_text": output if awaiting else "",
                        "verification_status": Job.Verification.AWAITING if awaiting else Job.Verification.NONE,
                        "commitment": {"inputs": inputs, "hash": commitment_hash(inputs),
                                       "usage_source": job.params.get("usage_source"), "signature": None,
                                       "chunks": chunks or [],
                                       "worker_public_key": public_key if any(
                                           c.get("signature") for c in chunks or []) else None}}

    return _job_capture(job_id=job_id, settle=settle)
