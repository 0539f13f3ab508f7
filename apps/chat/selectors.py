"""Chat reads, always for one user: another user's conversation is as good as missing."""

from apps.workers.models import CatalogueModel

from .models import Conversation

HISTORY_LIMIT = 40  # messages sent back to the model with a new one


def conversations_list(*, user, limit: int = 50):
    return Conversation.objects.filter(user=user).order_by("-updated_at")[:limit]


def conversation_get(*, user, conversation_id) -> Conversation | None:
    return Conversation.objects.filter(user=user, id=conversation_id).first()


def conversation_history(*, conversation: Conversation) -> list[dict]:
    """The conversation as OpenAI messages, oldest first, at most HISTORY_LIMIT."""
    messages = list(conversation.messages.order_by("-created_at", "-id")[:HISTORY_LIMIT])
    return [{"role": m.role, "content": m.content} for m in reversed(messages)]


def chat_models():
    return CatalogueModel.objects.filter(active=True, kind=CatalogueModel.Kind.CHAT).order_by("name")
