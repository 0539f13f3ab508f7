"""The chat socket's refusals, over the real channel layer and PostgreSQL (the streaming itself is
tested in a real browser: tests/e2e/test_chat_browser.py)."""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from apps.chat.consumers import CLOSE_NOT_SIGNED_IN, ChatConsumer
from apps.chat.models import Conversation
from apps.chat.services import conversation_create
from apps.marketplace.demo import catalogue_seed_builtin

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def _fresh_layer_and_closed_connections():
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    from django.db import connections

    await database_sync_to_async(connections.close_all)()


async def _connect(user):
    communicator = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
    communicator.scope["user"] = user
    connected, code = await communicator.connect()
    return communicator, connected, code


async def test_a_visitor_who_is_not_signed_in_is_turned_away():
    _, connected, code = await _connect(AnonymousUser())

    assert not connected and code == CLOSE_NOT_SIGNED_IN


@pytest.mark.parametrize("message, code", [
    ({"type": "dance"}, "invalid_message"),
    ({"type": "send", "model": "gemma-3-270m", "tier": "open", "content": ""}, "invalid_content"),
    ({"type": "send", "model": "gemma-3-270m", "tier": "confidential", "content": "hi"},
     "plaintext_in_confidential_request"),
    ({"type": "send", "model": "gemma-3-270m", "tier": "confidential"}, "missing_required_parameter"),
    ({"type": "send", "model": "gemma-3-270m", "tier": "gold", "content": "hi"}, "unsupported_tier"),
    ({"type": "send", "model": "no-such-model", "tier": "open", "content": "hi"}, "model_not_found"),
], ids=["unknown type", "empty", "confidential in the clear", "confidential unsealed", "unknown tier",
        "unknown model"])
async def test_bad_messages_are_answered_with_a_reason_and_nothing_is_charged(alice, message, code):
    await database_sync_to_async(catalogue_seed_builtin)()
    communicator, connected, _ = await _connect(alice)
    assert connected

    await communicator.send_json_to(message)
    answer = await communicator.receive_json_from(timeout=5)

    assert answer["type"] == "error" and answer["code"] == code
    assert not await Conversation.objects.filter(user=alice).aexists()
    await communicator.disconnect()


async def test_another_users_conversation_is_as_good_as_missing(alice, bob):
    await database_sync_to_async(catalogue_seed_builtin)()
    bobs = await database_sync_to_async(conversation_create)(user=bob, first_message="private")
    communicator, _, _ = await _connect(alice)

    await communicator.send_json_to({"type": "send", "conversation": bobs.id, "model": "gemma-3-270m",
                                     "tier": "open", "content": "let me in"})
    answer = await communicator.receive_json_from(timeout=5)

    assert answer == {"type": "error", "code": "conversation_not_found", "message": "No such conversation of yours."}
    assert await bobs.messages.acount() == 0
    await communicator.disconnect()


async def test_without_credits_the_answer_is_an_offer_to_buy_them(alice):
    await database_sync_to_async(catalogue_seed_builtin)()
    communicator, _, _ = await _connect(alice)

    await communicator.send_json_to({"type": "send", "model": "gemma-3-270m", "tier": "open", "content": "hi"})
    answer = await communicator.receive_json_from(timeout=10)

    assert answer["type"] == "payment_required" and answer["price_credits"] > 0
    assert answer["balance_credits"] == 0 and answer["buy_url"] == "/credits/buy"
    await communicator.disconnect()
