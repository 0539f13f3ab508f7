"""Which error a job request hears first: a missing or bad API key before anything about the
body or the model (as OpenAI answers), then the body, then the model. The view reads the key and
the model's entry in one database call; these hold it to that order."""

import json

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient

from apps.accounts.services import api_key_issue
from apps.marketplace.demo import catalogue_seed_builtin
from apps.marketplace.models import Job

pytestmark = pytest.mark.django_db(transaction=True)
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"


def _chat(model="gemma-3-270m") -> str:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})


def _embedding(model="all-minilm-l6-v2") -> str:
    return json.dumps({"model": model, "input": "hi", "peer_tier": "open"})


async def _post(path: str, body: str, key: str | None):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = await AsyncClient().post(path, body, content_type="application/json", headers=headers)
    return response.status_code, response.json()["error"]["code"]


@pytest.fixture
async def key(alice):
    await database_sync_to_async(catalogue_seed_builtin)()
    return (await database_sync_to_async(api_key_issue)(user=alice))[1]


@pytest.mark.parametrize("path, body", [(CHAT, _chat()), (CHAT, "{not json"), (CHAT, _chat("no-such-model")),
                                        (EMBEDDINGS, _embedding()), (EMBEDDINGS, "[]"),
                                        (EMBEDDINGS, _embedding("no-such-model"))])
async def test_a_missing_or_bad_key_is_answered_401_whatever_the_body_or_model(key, path, body):
    assert await _post(path, body, None) == (401, "missing_api_key")
    assert await _post(path, body, key[:-4] + "abcd") == (401, "invalid_api_key")


async def test_with_a_good_key_a_bad_body_is_400_and_an_unknown_model_404_and_nothing_is_created(alice, key):
    assert (await _post(CHAT, "{not json", key))[0] == 400
    assert await _post(CHAT, _chat("no-such-model"), key) == (404, "model_not_found")
    assert await _post(EMBEDDINGS, _embedding("no-such-model"), key) == (404, "model_not_found")
    assert await Job.objects.filter(user=alice).acount() == 0
