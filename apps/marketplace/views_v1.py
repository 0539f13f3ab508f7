"""The OpenAI-compatible API: parse, authorize, call services and the relay, render."""

import asyncio
import json
import logging

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError
from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from apps.accounts.selectors import api_key_authenticate, bearer_token
from apps.credits.pricing import micro_to_credits_ceil
from apps.credits.x402 import PAYMENT_HEADER, PaymentRejected, payment_required, x402_settle_to_credits
from apps.verification.presenters import verification_record

from . import presenters
from .admission import Slot, job_admit
from .embeddings import EmbedRelay
from .errors import ApiError
from .relay import JobFailed, JobRelay
from .confidential import sealed_job_create
from .requests import (
    parse_chat_request, parse_completion_request, parse_embedding_request, parse_sealed_chat_request, requested_tier,
)
from .selectors import job_get, models_listing
from .services import InsufficientCredits, caller_and_entry, embed_job_create, job_create_and_claim

logger = logging.getLogger(__name__)


def _api_token(request) -> str:
    token = bearer_token(request.headers.get("Authorization", ""))
    if not token:
        raise ApiError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key")
    return token


def _invalid_key() -> ApiError:
    return ApiError(401, "Invalid or revoked API key.", code="invalid_api_key")


async def api_user(request):
    user = await database_sync_to_async(api_key_authenticate)(raw_key=_api_token(request))
    if user is None:
        raise _invalid_key()
    return user


async def _api_user_and_entry(request, parse):
    """(user, parsed request, catalogue entry) for a job request: `parse(body)` gives the request;
    the key and the model's entry are read in one database call (each call is a thread hop and a
    pooled connection). A bad key is told before anything else, a bad body or model after it."""
    token = _api_token(request)
    try:
        parsed = parse(_body(request))
    except ApiError:
        await api_user(request)
        raise
    user, entry = await database_sync_to_async(caller_and_entry)(raw_key=token, name=parsed.model)
    if user is None:
        raise _invalid_key()
    return user, parsed, entry


def openai_errors(view):
    async def wrapper(request, *args, **kwargs):
        try:
            return await view(request, *args, **kwargs)
        except ApiError as exc:
            return exc.response()
        except OperationalError:  # the database is down or out of connections: retrying can help
            logger.exception("database unavailable in %s", view.__name__)
            return ApiError(503, "The node's database is unavailable; retry shortly.", code="database_unavailable",
                            headers={"Retry-After": "5"}).response()
        except Exception:  # a bug must still answer in OpenAI's shape; the reaper refunds holds
            logger.exception("unhandled error in %s", view.__name__)
            return ApiError(500, "The node failed to handle this request.", code="internal_error").response()
    wrapper.__name__ = view.__name__
    return csrf_exempt(wrapper)


@openai_errors
async def models_list(request):
    if request.method != "GET":
        raise ApiError(405, "Use GET.", code="method_not_allowed")
    await api_user(request)
    return JsonResponse({"object": "list", "data": await database_sync_to_async(models_listing)()})


async def _signed_in_user(request):
    """The session's user when the request carries no API key (a read-only GET from our pages)."""
    if request.headers.get("Authorization"):
        return None
    user = await request.auser()
    return user if user.is_authenticated else None


@openai_errors
async def job_proof(request, job_id):
    """A job's proof (its commitment, signature and worker key): for its owner (by API key, or
    signed in on this site: the chat's "proof" link), or for anyone with the job id when the owner
    asked for a public proof (peer_public_proof)."""
    if request.method != "GET":
        raise ApiError(405, "Use GET.", code="method_not_allowed")
    job = await database_sync_to_async(job_get)(job_id=job_id)
    if job is None or not job.proof_public:
        user = await _signed_in_user(request) or await api_user(request)
        if job is None or job.user_id != user.id:  # another user's job is as good as missing
            raise ApiError(404, f"No job {job_id} of yours on this node.", code="job_not_found")
    if job.commitment is None:
        raise ApiError(409, "This job has no commitment: it did not complete.", code="job_not_completed")
    return JsonResponse(presenters.proof_body(job, await database_sync_to_async(verification_record)(job)))


@openai_errors
async def chat_completions(request):
    return await _run_job(request, parse_chat_request)


@openai_errors
async def completions(request):
    return await _run_job(request, parse_completion_request)


async def _run_job(request, parse):
    if request.method != "POST":
        raise ApiError(405, "Use POST.", code="method_not_allowed")
    limits = dict(default_max_tokens=settings.PEER_DEFAULT_MAX_TOKENS, max_tokens_limit=settings.PEER_MAX_TOKENS_LIMIT)

    def parse_any_tier(raw: bytes):
        if requested_tier(raw, default_tier=settings.PEER_DEFAULT_TIER) == "confidential":
            if parse is not parse_chat_request:
                raise ApiError(400, "/v1/completions has no confidential form: send a chat request through the "
                               "client proxy (python -m client proxy).", param="peer_tier", code="unsupported_tier")
            return parse_sealed_chat_request(raw, **limits)
        return parse(raw, default_tier=settings.PEER_DEFAULT_TIER, **limits)

    user, chat, entry = await _api_user_and_entry(request, parse_any_tier)
    if entry.kind != "chat":
        raise ApiError(400, f"{entry.name} is an embedding model: use POST /v1/embeddings.", param="model",
                       code="unsupported_model")
    slot = await job_admit()
    streaming = False
    try:
        response = await _relay_job(request, user=user, chat=chat, entry=entry, slot=slot)
        streaming = isinstance(response, StreamingHttpResponse)
        return response
    finally:
        if not streaming:  # a stream's body lets go of its place when it ends
            slot.release()


async def _relay_job(request, *, user, chat, entry, slot):
    if chat.sealed is not None:
        job, settlement = await _create_paid_job(request, create=sealed_job_create, user=user, chat=chat, entry=entry)
        claimed = None
    else:  # created with the best idle worker claimed, in one database call
        (job, claimed), settlement = await _create_paid_job(request, create=job_create_and_claim, user=user,
                                                            chat=chat, entry=entry)
    relay = JobRelay(job=job, entry=entry, route=chat.route, claimed=claimed)
    try:
        await relay.start()
    except JobFailed as exc:
        await relay.close()
        retry = {"Retry-After": str(int(settings.PEER_QUEUE_TIMEOUT))} if exc.status == 503 else {}
        raise ApiError(exc.status, exc.message, code=exc.code, headers=retry) from None
    except asyncio.CancelledError:
        # The client left while the job waited for a worker: refund now, not at the reaper.
        await asyncio.shield(relay.abandon("client closed the connection while the job waited for a worker"))
        raise
    if chat.stream:
        body = _stream(relay, include_usage=chat.include_usage, slot=slot)
        slot.release_with(body)  # a body never sent (the client left first) is collected unstarted
        response = StreamingHttpResponse(body, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return _with_settlement(response, settlement)
    try:
        async for _ in relay.deltas():
            pass
    except JobFailed as exc:  # e.g. a failover that found no other worker: a 503 as above
        retry = {"Retry-After": str(int(settings.PEER_QUEUE_TIMEOUT))} if exc.status == 503 else {}
        raise ApiError(exc.status, exc.message, code=exc.code, headers=retry) from None
    finally:
        if not relay.settled:  # the client went away while we waited
            await relay.abort("client closed the connection")
        await relay.close()
    return _with_settlement(JsonResponse(presenters.completion_body(relay.job, sealed=relay.sealed_parts)), settlement)


@openai_errors
async def embeddings(request):
    """One vector per input, in order, from a worker serving the embedding model; settled like chat."""
    if request.method != "POST":
        raise ApiError(405, "Use POST.", code="method_not_allowed")
    def parse(raw: bytes):
        embedding = parse_embedding_request(raw, default_tier=settings.PEER_DEFAULT_TIER)
        if embedding.tier == "confidential":
            raise ApiError(400, "Embeddings have no confidential form yet: use the open or verified tier.",
                           param="peer_tier", code="unsupported_tier")
        return embedding

    user, embedding, entry = await _api_user_and_entry(request, parse)
    slot = await job_admit()
    try:
        job, settlement = await _create_paid_job(request, create=embed_job_create, user=user, embedding=embedding,
                                                 entry=entry)
        relay = EmbedRelay(job=job, entry=entry, route=embedding.route)
        vectors = await relay.run()
    except JobFailed as exc:
        retry = {"Retry-After": str(int(settings.PEER_QUEUE_TIMEOUT))} if exc.status == 503 else {}
        raise ApiError(exc.status, exc.message, code=exc.code, headers=retry) from None
    finally:
        slot.release()
    body = presenters.embedding_body(relay.job, vectors, encoding_format=embedding.encoding_format)
    return _with_settlement(JsonResponse(body), settlement)


def _body(request) -> bytes:
    try:
        return request.body
    except RequestDataTooBig:  # Django's cap (DATA_UPLOAD_MAX_MEMORY_SIZE); say so in OpenAI's shape
        raise ApiError(413, f"The request body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes: send "
                       "fewer or shorter messages or inputs per request.", code="request_too_large") from None


async def _create_paid_job(request, *, create, **job):
    """Hold the job's price from credits (`create(**job)`: job_create_and_claim, sealed_job_create
    or embed_job_create); when they do not cover it, settle the x402 payment the request carries
    (crediting the caller) and try once more, or answer 402."""
    try:
        return await database_sync_to_async(create)(**job), None
    except InsufficientCredits as exc:
        shortfall = exc
    payment = request.headers.get(PAYMENT_HEADER)
    if not payment:
        raise _payment_required(request, shortfall, "insufficient_credits",
                                f"Not enough credits: this request is quoted at "
                                f"{micro_to_credits_ceil(shortfall.price)} credits.")
    try:
        settlement = await database_sync_to_async(x402_settle_to_credits)(
            user=job["user"], header_value=payment, price_micro=shortfall.price)
    except PaymentRejected as rejected:
        raise _payment_required(request, shortfall, f"payment_{rejected.reason}", rejected.message) from None
    try:
        return await database_sync_to_async(create)(**job), settlement
    except InsufficientCredits as exc:  # spent by a concurrent request meanwhile: the payment stays as credits
        raise _payment_required(request, exc, "insufficient_credits", "The payment was credited to your "
                                "account, but a concurrent request spent it; retry.") from None


def _payment_required(request, shortfall: InsufficientCredits, code: str, message: str) -> ApiError:
    body, headers = payment_required(price_micro=shortfall.price, available_micro=shortfall.available,
                                     resource_url=request.build_absolute_uri())
    return ApiError(402, message, code=code, headers=headers, extra=body)


def _with_settlement(response, settlement):
    if settlement is not None:
        response["PAYMENT-RESPONSE"] = settlement.header
    return response


async def _stream(relay: JobRelay, *, include_usage: bool, slot: Slot):
    try:
        if opening := presenters.opening_chunk(relay.job):
            yield opening
        async for piece in relay.deltas():
            if isinstance(piece, dict):  # a confidential answer's piece, sealed to the client
                yield presenters.sealed_chunk(relay.job, len(relay.sealed_parts) - 1, piece)
            else:
                yield presenters.text_chunk(relay.job, piece)
        yield presenters.closing_chunk(relay.job)
        if include_usage:
            yield presenters.usage_chunk(relay.job)
    except JobFailed as exc:
        yield presenters.sse(json.dumps(ApiError(exc.status, exc.message, code=exc.code).body()))
    finally:
        if not relay.settled:
            await relay.abort("client closed the stream")
        await relay.close()
        slot.release()
    yield presenters.sse("[DONE]")
