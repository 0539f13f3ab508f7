"""Chat writes: a conversation, a message in it, and a message of the chat page made ready to
become a job (as an API call would: parsed, its model's queue checked)."""

import json

from django.conf import settings

from apps.credits.pricing import MICRO_PER_CREDIT
from apps.credits.selectors import balance_get
from apps.marketplace.errors import ApiError
from apps.marketplace.requests import parse_chat_request, parse_sealed_chat_request
from apps.marketplace.services import catalogue_entry_open

from .models import Conversation, Message
from .selectors import conversation_get, conversation_history

TITLE_LENGTH = 60


def conversation_create(*, user, first_message: str) -> Conversation:
    title = " ".join(first_message.split())[:TITLE_LENGTH] or "New conversation"
    return Conversation.objects.create(user=user, title=title)


def message_add(*, conversation: Conversation, role: str, content: str, job=None) -> Message:
    message = Message.objects.create(conversation=conversation, role=role, content=content, job=job)
    Conversation.objects.filter(id=conversation.id).update(updated_at=message.created_at)
    return message


# --- A message from the chat page becoming a job (apps/chat/consumers.py) ---------------------

MAX_CONTENT = 8_000  # characters of one message
BROWSER_TIERS = ("open", "verified")  # and confidential, sealed by the page (chat_sealed_prepare)
CONFIDENTIAL_TITLE = "Confidential conversation"


def chat_message_prepare(*, user, request: dict):
    """The conversation (new or the user's own), the user's message saved, the chat request with
    the conversation's history and its catalogue entry. Raises ApiError in OpenAI's words."""
    content, tier = request.get("content"), request.get("tier", "verified")
    if not isinstance(content, str) or not content.strip() or len(content) > MAX_CONTENT:
        raise ApiError(400, f"A message is 1 to {MAX_CONTENT} characters.", code="invalid_content")
    if tier not in BROWSER_TIERS:
        raise ApiError(400, f"'tier' must be one of {', '.join(BROWSER_TIERS)} or confidential.",
                       code="unsupported_tier")
    conversation = _conversation_of(user, request)
    history = conversation_history(conversation=conversation) if conversation else []
    body = {"model": request.get("model"), "peer_tier": tier, "stream": True,
            "max_tokens": request.get("max_tokens", settings.PEER_DEFAULT_MAX_TOKENS),
            "messages": history + [{"role": "user", "content": content}]}
    chat = parse_chat_request(json.dumps(body).encode(), default_tier="verified",
                              default_max_tokens=settings.PEER_DEFAULT_MAX_TOKENS,
                              max_tokens_limit=settings.PEER_MAX_TOKENS_LIMIT)
    entry = _chat_entry(chat)
    conversation = conversation or conversation_create(user=user, first_message=content)
    message_add(conversation=conversation, role=Message.Role.USER, content=content)
    return conversation, chat, entry


def chat_sealed_prepare(*, user, request: dict):
    """As chat_message_prepare for a message the page sealed: no content reaches the node, so
    none is saved (the page holds a confidential conversation)."""
    if "content" in request:
        raise ApiError(400, "A confidential message travels sealed only: send peer_sealed, not content.",
                       code="plaintext_in_confidential_request")
    conversation = _conversation_of(user, request)
    body = {"model": request.get("model"), "peer_tier": "confidential", "stream": True,
            "max_tokens": request.get("max_tokens", settings.PEER_DEFAULT_MAX_TOKENS),
            "peer_sealed": request.get("peer_sealed")}
    chat = parse_sealed_chat_request(json.dumps(body).encode(), default_max_tokens=settings.PEER_DEFAULT_MAX_TOKENS,
                                     max_tokens_limit=settings.PEER_MAX_TOKENS_LIMIT)
    entry = _chat_entry(chat)
    return conversation or conversation_create(user=user, first_message=CONFIDENTIAL_TITLE), chat, entry


def chat_answer_record(*, conversation, job, text: str) -> int:
    """Save the answer (when any text came) with its job; the user's balance in credits."""
    if text:
        message_add(conversation=conversation, role=Message.Role.ASSISTANT, content=text, job=job)
    return balance_get(user=job.user) // MICRO_PER_CREDIT


def _conversation_of(user, request: dict):
    if request.get("conversation") is None:
        return None
    conversation = conversation_get(user=user, conversation_id=request["conversation"])
    if conversation is None:
        raise ApiError(404, "No such conversation of yours.", code="conversation_not_found")
    return conversation


def _chat_entry(chat):
    entry = catalogue_entry_open(name=chat.model)
    if entry.kind != "chat":
        raise ApiError(400, f"{entry.name} is an embedding model: it cannot chat.", param="model",
                       code="unsupported_model")
    return entry
