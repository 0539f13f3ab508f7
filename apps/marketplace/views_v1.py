"""The OpenAI-compatible API: parse, authorize, call services and the relay, render."""

import json
import logging

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from apps.accounts.selectors import api_key_authenticate, bearer_token
from apps.credits.pricing import micro_to_credits_ceil
from apps.credits.x402 import PAYMENT_HEADER, PaymentRejected, payment_required, x402_settle_to_credits

from . import presenters
from .errors import ApiError
from .relay import JobFailed, JobRelay
from .requests import parse_chat_request, parse_completion_request
from .selectors import catalogue_get, models_listing
from .services import InsufficientCredits, job_create

logger = logging.getLogger(__name__)


async def _authenticate(request):
    token = bearer_token(request.headers.get("Authorization", ""))
    if not token:
        raise ApiError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key")
    user = await database_sync_to_async(api_key_authenticate)(raw_key=token)
    if user is None:
        raise ApiError(401, "Invalid or revoked API key.", code="invalid_api_key")
    return user


def _api_errors(view):
    async def wrapper(request, *args, **kwargs):
        try:
            return await view(request, *args, **kwargs)
        except ApiError as exc:
            return exc.response()
        except Exception:  # a bug must still answer in OpenAI's shape; the reaper refunds holds
            logger.exception("unhandled error in %s", view.__name__)
            return ApiError(500, "The node failed to handle this request.", code="internal_error").response()
    wrapper.__name__ = view.__name__
    return csrf_exempt(wrapper)


@_api_errors
async def models_list(request):
    if request.method != "GET":
        raise ApiError(405, "Use GET.", code="method_not_allowed")
    await _authenticate(request)
    return JsonResponse({"object": "list", "data": await database_sync_to_async(models_listing)()})


@_api_errors
async def chat_completions(request):
    return await _run_job(request, parse_chat_request)


@_api_errors
async def completions(request):
    return await _run_job(request, parse_completion_request)


async def _run_job(request, parse):
    if request.method != "POST":
        raise ApiError(405, "Use POST.", code="method_not_allowed")
    user = await _authenticate(request)
    chat = parse(request.body, default_tier=settings.PEER_DEFAULT_TIER,
                 default_max_tokens=settings.PEER_DEFAULT_MAX_TOKENS, max_tokens_limit=settings.PEER_MAX_TOKENS_LIMIT)
    entry = await database_sync_to_async(catalogue_get)(name=chat.model)
    if entry is None:
        raise ApiError(404, f"The model '{chat.model}' does not exist on this network; GET /v1/models "
                       "lists them.", param="model", code="model_not_found")
    job, settlement = await _create_paid_job(request, user=user, chat=chat, entry=entry)
    relay = JobRelay(job=job, entry=entry)
    try:
        await relay.start()
    except JobFailed as exc:
        await relay.close()
        raise ApiError(exc.status, exc.message, code=exc.code) from None
    if chat.stream:
        response = StreamingHttpResponse(_stream(relay, include_usage=chat.include_usage),
                                         content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return _with_settlement(response, settlement)
    try:
        async for _ in relay.deltas():
            pass
    except JobFailed as exc:
        raise ApiError(exc.status, exc.message, code=exc.code) from None
    finally:
        if not relay.settled:  # the client went away while we waited
            await relay.abort("client closed the connection")
        await relay.close()
    return _with_settlement(JsonResponse(presenters.completion_body(relay.job)), settlement)


async def _create_paid_job(request, *, user, chat, entry):
    """Hold the job's price from credits; when they do not cover it, settle the x402 payment the
    request carries (crediting the caller) and try once more, or answer 402."""
    try:
        return await database_sync_to_async(job_create)(user=user, chat=chat, entry=entry), None
    except InsufficientCredits as exc:
        shortfall = exc
    payment = request.headers.get(PAYMENT_HEADER)
    if not payment:
        raise _payment_required(request, shortfall, "insufficient_credits",
                                f"Not enough credits: this request is quoted at "
                                f"{micro_to_credits_ceil(shortfall.price)} credits.")
    try:
        settlement = await database_sync_to_async(x402_settle_to_credits)(
            user=user, header_value=payment, price_micro=shortfall.price)
    except PaymentRejected as rejected:
        raise _payment_required(request, shortfall, f"payment_{rejected.reason}", rejected.message) from None
    try:
        return await database_sync_to_async(job_create)(user=user, chat=chat, entry=entry), settlement
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


async def _stream(relay: JobRelay, *, include_usage: bool):
    try:
        if opening := presenters.opening_chunk(relay.job):
            yield opening
        async for text in relay.deltas():
            yield presenters.text_chunk(relay.job, text)
        yield presenters.closing_chunk(relay.job)
        if include_usage:
            yield presenters.usage_chunk(relay.job)
    except JobFailed as exc:
        yield presenters.sse(json.dumps(ApiError(exc.status, exc.message, code=exc.code).body()))
    finally:
        if not relay.settled:
            await relay.abort("client closed the stream")
        await relay.close()
    yield presenters.sse("[DONE]")
