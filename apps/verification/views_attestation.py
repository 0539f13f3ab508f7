"""GET /v1/attestation?model=NAME&nonce=B64 (docs/confidential.md §1): the attested enclaves
serving a model, with their evidence, so that a client can verify them itself before sealing.

With a client nonce, each enclave is asked for fresh evidence over it (through its agent link,
apps/workers/attest_link.py); enclaves that do not answer within PEER_ATTESTATION_FETCH_TIMEOUT
are left out. Without one, the evidence the node verified over its own last nonce is returned.
"""

import asyncio
import logging
import time

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.http import JsonResponse

from apps.marketplace.errors import ApiError
from apps.marketplace.relay import LAYER_ERRORS
from apps.marketplace.views_v1 import api_user, openai_errors
from apps.workers.models import Worker
from apps.workers.selectors import catalogue_get, model_attested, workers_eligible

from .attestation import nonce_bytes

logger = logging.getLogger(__name__)


@openai_errors
async def attestation(request):
    if request.method != "GET":
        raise ApiError(405, "Use GET.", code="method_not_allowed")
    await api_user(request)
    return JsonResponse(await attestation_listing(request.GET.get("model"), request.GET.get("nonce")))


async def attestation_listing(name, nonce) -> dict:
    """The body of GET /v1/attestation (also the chat page's, for a signed-in user); raises
    ApiError."""
    if not name:
        raise ApiError(400, "'model' is required: GET /v1/attestation?model=NAME.", param="model",
                       code="missing_required_parameter")
    if nonce is not None and nonce_bytes(nonce) is None:
        raise ApiError(400, "'nonce' must be 32 random bytes in standard base64 (URL-encoded).", param="nonce",
                       code="invalid_value")
    enclaves = await database_sync_to_async(_attested_enclaves)(name=name)
    if not enclaves:
        raise ApiError(503, f"No attested enclave serves {name} right now; retry shortly.",
                       code="no_attested_enclave", headers={"Retry-After": "10"})
    if nonce is not None:
        fresh = await _fresh_evidence(enclaves, nonce)
        enclaves = [{**enclave, "evidence": fresh[enclave["worker"]]} for enclave in enclaves
                    if enclave["worker"] in fresh]
        if not enclaves:
            raise ApiError(503, f"No enclave serving {name} answered the challenge in time; retry shortly.",
                           code="no_attested_enclave", headers={"Retry-After": "10"})
    return {"object": "attestation", "model": name, "nonce": nonce,
            "enclaves": [{key: value for key, value in enclave.items() if key != "channel"} for enclave in enclaves]}


def _attested_enclaves(*, name: str) -> list[dict]:
    entry = catalogue_get(name=name)
    if entry is None:
        raise ApiError(404, f"The model '{name}' does not exist on this network; GET /v1/models lists them.",
                       param="model", code="model_not_found")
    eligible = workers_eligible(entry=entry, tier="confidential", statuses=(Worker.Status.IDLE, Worker.Status.BUSY))
    channels = dict(Worker.objects.filter(id__in=[w.id for w, _ in eligible]).values_list("id", "channel_name"))
    found = []
    for worker, model in eligible:
        record = model_attested(worker, model["digest"])
        if record is None or not channels.get(worker.id):
            continue
        found.append({
            "worker": str(worker.id), "kind": record["kind"], "simulated": record["simulated"],
            "enclave_key": record["enclave_key"], "signing_key": record["signing_key"],
            "model_digest": model["digest"], "code_measurement": record["code_measurement"],
            "evidence": record["evidence"], "channel": channels[worker.id],
            "verdict": {"ok": record["ok"], "simulated": record["simulated"], "problems": record["problems"],
                        "nonce": record["nonce"], "verified_at": record["verified_at"],
                        "expires_at": record["expires_at"]}})
    return found


async def _fresh_evidence(enclaves: list[dict], nonce: str) -> dict[str, dict]:
    """worker id -> its enclave's evidence over the client's `nonce`, for those that answer in time."""
    layer = get_channel_layer()
    fresh: dict[str, dict] = {}
    reply_to = None
    try:
        reply_to = await layer.new_channel()
        for enclave in enclaves:
            await layer.send(enclave["channel"], {"type": "agent.attest", "nonce": nonce, "reply_to": reply_to,
                                                  "model_digest": enclave["model_digest"]})
        deadline = time.monotonic() + settings.PEER_ATTESTATION_FETCH_TIMEOUT
        answered = 0
        while answered < len(enclaves) and (remaining := deadline - time.monotonic()) > 0:
            try:
                message = await asyncio.wait_for(layer.receive(reply_to), remaining)
            except TimeoutError:
                break  # the cancelled receive lets go of the channel
            answered += 1
            frame = message.get("frame") or {}
            if frame.get("type") == "attest.evidence":
                fresh[message["worker_id"]] = frame["evidence"]
            else:
                logger.warning("worker %s's enclave refused a client's challenge: %s", message.get("worker_id"),
                               frame.get("code"))
    except LAYER_ERRORS as exc:
        raise ApiError(503, f"The node's message bus is unavailable ({type(exc).__name__}); retry shortly.",
                       code="node_unavailable", headers={"Retry-After": "5"}) from None
    finally:
        if reply_to is not None:
            await _let_go(layer, reply_to)
    return fresh


async def _let_go(layer, channel: str) -> None:
    """channels_redis's pub/sub layer unsubscribes a channel when a receive on it is cancelled
    (Channels has no delete_channel): start one and cancel it once it waits."""
    receiving = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(0)
    receiving.cancel()
    await asyncio.gather(receiving, return_exceptions=True)
