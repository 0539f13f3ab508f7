"""The chat page: conversations, a model and tier picker, and the socket that streams answers
(consumers.py)."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from apps.marketplace.errors import ApiError
from apps.verification.views_attestation import attestation_listing
from apps.workers.browser import CONTEXT_LENGTH, browser_model, catalogue_names_for, digest_hex, model_file_name

from apps.credits.pricing import MICRO_PER_CREDIT
from apps.credits.selectors import balance_get

from .selectors import chat_models, conversation_get, conversations_list


@login_required
def chat(request, conversation_id=None):
    conversation = None
    if conversation_id is not None:
        conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        if conversation is None:
            raise Http404("No such conversation of yours.")
    device = browser_model()
    response = render(request, "chat/chat.html", {
        "conversation": conversation,
        "messages": conversation.messages.select_related("job") if conversation else [],
        "conversations": conversations_list(user=request.user), "models": chat_models(),
        "balance_credits": balance_get(user=request.user) // MICRO_PER_CREDIT,
        # "On this device": the builtin model, run in the page (static/js/local_model.js's Engine).
        "device_model": device, "device_names": catalogue_names_for(device), "device_context": CONTEXT_LENGTH,
        "device_model_url": reverse("browser-worker-model", args=[digest_hex(device), model_file_name(device)]),
    })
    # Cross-origin isolation lets the on-device model use several threads (SharedArrayBuffer);
    # the page loads nothing from other origins.
    response["Cross-Origin-Opener-Policy"] = "same-origin"
    response["Cross-Origin-Embedder-Policy"] = "require-corp"
    return response


@login_required
@require_GET
async def attestation(request):
    """GET /v1/attestation for the signed-in page, which verifies the evidence itself before it
    seals a confidential message (static/js/confidential.js)."""
    try:
        return JsonResponse(await attestation_listing(request.GET.get("model"), request.GET.get("nonce")))
    except ApiError as exc:
        return exc.response()
