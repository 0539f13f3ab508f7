"""/api/balance/ and /api/ledger/: the caller's credits and history, with a Bearer API key."""

import pytest
from django.db import transaction
from django.test import Client

from apps.accounts.services import api_key_issue, api_key_revoke
from apps.credits.services import credits_grant, credits_hold_in_atomic


@pytest.fixture
def alices_key(alice):
    _, raw_key = api_key_issue(user=alice, name="laptop")
    return raw_key


def _get(path, key=None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
    return Client().get(path, **headers)


def test_the_balance_shows_spendable_held_and_whole_credits(alice, alices_key):
    credits_grant(user=alice, credits=10)
    with transaction.atomic(durable=True):
        credits_hold_in_atomic(user=alice, amount=25_000, reference="job:api")

    response = _get("/api/balance/", alices_key)

    assert response.status_code == 200
    assert response.json() == {"balance_micro_usdc": 75_000, "held_micro_usdc": 25_000, "credits": 7}


def test_a_new_user_has_a_zero_balance(alice, alices_key):
    response = _get("/api/balance/", alices_key)

    assert response.status_code == 200
    assert response.json() == {"balance_micro_usdc": 0, "held_micro_usdc": 0, "credits": 0}


def test_each_key_sees_only_its_own_users_balance(alice, bob, alices_key):
    credits_grant(user=bob, credits=3)
    _, bobs_key = api_key_issue(user=bob)

    assert _get("/api/balance/", alices_key).json()["balance_micro_usdc"] == 0
    assert _get("/api/balance/", bobs_key).json()["balance_micro_usdc"] == 30_000


def test_the_balance_without_a_key_is_unauthorized(alice):
    response = _get("/api/balance/")

    assert response.status_code in (401, 403)


@pytest.mark.parametrize("key", ["pc_not-a-real-key", "sk-openai-style", "pc_" + "x" * 200])
def test_the_balance_with_an_unknown_key_is_unauthorized(alice, key):
    response = _get("/api/balance/", key)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


def test_the_balance_with_a_revoked_key_is_unauthorized(alice):
    api_key, raw_key = api_key_issue(user=alice)
    api_key_revoke(user=alice, key_id=api_key.id)

    assert _get("/api/balance/", raw_key).status_code == 401


def test_a_signed_in_browser_may_read_its_balance_without_a_key(alice):
    credits_grant(user=alice, credits=2)
    client = Client()
    client.force_login(alice)

    response = client.get("/api/balance/")

    assert response.status_code == 200
    assert response.json()["balance_micro_usdc"] == 20_000


def test_the_ledger_lists_the_users_own_movements_newest_first(alice, bob, alices_key):
    credits_grant(user=alice, credits=10)
    credits_grant(user=bob, credits=1)
    with transaction.atomic(durable=True):
        credits_hold_in_atomic(user=alice, amount=30_000, reference="job:ledger")

    response = _get("/api/ledger/", alices_key)

    assert response.status_code == 200
    rows = response.json()
    assert [(row["kind"], row["amount"], row["reference"]) for row in rows] == [
        ("hold", -30_000, "job:ledger"), ("grant", 100_000, "")]
    assert rows[0]["id"] > rows[1]["id"]
    assert all(row["created_at"] for row in rows)


def test_the_ledger_without_a_key_is_unauthorized(alice):
    assert _get("/api/ledger/").status_code in (401, 403)
