"""Chat writes: a conversation, a message in it."""

from .models import Conversation, Message

TITLE_LENGTH = 60


def conversation_create(*, user, first_message: str) -> Conversation:
    title = " ".join(first_message.split())[:TITLE_LENGTH] or "New conversation"
    return Conversation.objects.create(user=user, title=title)


def message_add(*, conversation: Conversation, role: str, content: str, job=None) -> Message:
    message = Message.objects.create(conversation=conversation, role=role, content=content, job=job)
    Conversation.objects.filter(id=conversation.id).update(updated_at=message.created_at)
    return message
