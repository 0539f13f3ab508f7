"""POST /credits/buy (the paper's call) and GET /credits/deposits/<reference>/, and their /api/ twins."""

import json
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.utils import timezone

from apps.accounts.services import api_key_issue
from apps.credits.deposits.services import deposit_reference_create
from apps.credits.models import DepositReference
from apps.credits.solana.tokens import associated_token_address
from solders.pubkey import Pubkey

PAY_TO = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"
MINT = "4zMMC9srt5Ri5X14GAgXhaHii3GnPAEERYPJgZJDncDU"


@pytest.fixture(autouse=True)
def _deposit_settings(settings):
    settings.PEER_PAY_TO = PAY_TO
    settings.PEER_USDC_MINT = MINT
    settings.PEER_SOLANA_NETWORK = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"


@pytest.fixture
def alices_key(alice):
    return api_key_issue(user=alice, name="laptop")[1]


def _buy(body, key=None, *, path="/credits/buy", content_type="application/json"):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, str) else json.dumps(body)
    return Client().post(path, data, content_type=content_type, **headers)


def _get(path, key):
    return Client().get(path, HTTP_AUTHORIZATION=f"Bearer {key}")


def test_buying_answers_what_to_pay_to_whom_and_how(alice, alices_key):
    response = _buy({"account": "me", "usdc": 10}, alices_key)

    assert response.status_code == 201
    body = response.json()
    reference = DepositReference.objects.get(user=alice)
    token_account = str(associated_token_address(owner=Pubkey.from_string(PAY_TO), mint=Pubkey.from_string(MINT)))
    assert {k: body[k] for k in ("account", "status", "usdc", "micro_usdc", "amount", "credits", "recipient",
                                 "token_account", "mint", "decimals", "reference", "memo", "network")} == {
        "account": "me", "status": "pending", "usdc": "10", "micro_usdc": 10_000_000, "amount": "10000000",
        "credits": 1_000, "recipient": PAY_TO, "token_account": token_account, "mint": MINT, "decimals": 6,
        "reference": reference.key, "memo": f"peercycles:{reference.key}",
        "network": "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"}
    assert reference.micro_usdc == 10_000_000
    assert body["status_url"] == f"http://testserver/credits/deposits/{reference.key}/"
    assert response["Location"] == body["status_url"]
    assert abs((timezone.now() + timedelta(hours=1)) - reference.expires_at) < timedelta(minutes=1)
    assert body["expires_at"].startswith(reference.expires_at.isoformat()[:19])


def test_the_answer_carries_a_solana_pay_transfer_request_url(alice, alices_key):
    body = _buy({"account": "me", "usdc": "2.5"}, alices_key).json()

    url = urlsplit(body["url"])
    query = parse_qs(url.query)
    assert (url.scheme, url.path) == ("solana", PAY_TO)
    assert query == {"amount": ["2.5"], "spl-token": [MINT], "reference": [body["reference"]],
                     "label": ["Peer Cycles"], "message": ["2.5 USDC of credits"], "memo": [body["memo"]]}
    assert "%20" in body["url"] and "+" not in body["url"]  # spaces percent-encoded, as the spec's examples


def test_the_papers_curl_without_a_content_type_is_understood(alice, alices_key):
    # curl -d sends application/x-www-form-urlencoded unless told otherwise.
    response = _buy('{"account":"me","usdc":10}', alices_key, content_type="application/x-www-form-urlencoded")

    assert response.status_code == 201
    assert response.json()["micro_usdc"] == 10_000_000


def test_a_trailing_slash_is_accepted_too(alice, alices_key):
    assert _buy({"account": "me", "usdc": 1}, alices_key, path="/credits/buy/").status_code == 201
    assert _buy({"account": "me", "usdc": 1}, alices_key, path="/api/credits/buy/").status_code == 201


def test_the_rest_api_offers_the_same_purchase_with_its_own_status_url(alice, alices_key):
    response = _buy({"account": "me", "usdc": 1}, alices_key, path="/api/credits/buy")

    assert response.status_code == 201
    body = response.json()
    assert body["status_url"] == f"http://testserver/api/credits/deposits/{body['reference']}/"
    assert _get(urlsplit(body["status_url"]).path, alices_key).json()["status"] == "pending"


@pytest.mark.parametrize("body", [
    '{"account": "me", "usdc": 0.1}', '{"account": "me", "usdc": 10.000001}', '{"account": "me", "usdc": 2.675}'])
def test_a_json_number_is_read_exactly_never_as_a_float(alice, alices_key, body):
    expected = {"0.1": 100_000, "10.000001": 10_000_001, "2.675": 2_675_000}[body.split(": ")[-1][:-1]]

    assert _buy(body, alices_key).json()["micro_usdc"] == expected


@pytest.mark.parametrize("usdc", [0, -1, "0", "-5", "abc", "", None, True, [10], {"v": 1}, "1.1234567", 1.1234567,
                                  "0.0000001", "1e3", "1E3", "1.5e2", "NaN", "Infinity", " 10", "10 ", "0x10",
                                  "10,5", 1_000_001, "1000000.000001", 10**30, "9" * 40])
def test_a_bad_usdc_amount_is_refused_with_a_clear_error(alice, alices_key, usdc):
    response = _buy({"account": "me", "usdc": usdc}, alices_key)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "usdc" and error["code"] == "invalid_amount" and error["message"]
    assert not DepositReference.objects.exists()


def test_json_constants_and_malformed_bodies_are_refused(alice, alices_key):
    assert _buy('{"account": "me", "usdc": NaN}', alices_key).status_code == 400
    assert _buy('{"account": "me", "usdc": 1', alices_key).status_code == 400
    assert _buy("[1, 2]", alices_key).status_code == 400
    assert _buy({"account": "me"}, alices_key).json()["error"]["message"].startswith("usdc is required")
    assert not DepositReference.objects.exists()


def test_the_largest_purchase_is_a_million_usdc(alice, alices_key):
    assert _buy({"account": "me", "usdc": "1000000"}, alices_key).json()["micro_usdc"] == 10**12


def test_buying_without_a_key_is_unauthorized(alice):
    response = _buy({"account": "me", "usdc": 10})

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


def test_buying_with_an_unknown_key_is_unauthorized(alice):
    assert _buy({"account": "me", "usdc": 10}, "pc_not-a-real-key").status_code == 401


@pytest.mark.parametrize("account", ["bob", "alice", "", 7, None])
def test_buying_for_any_account_but_me_is_refused(alice, bob, alices_key, account):
    response = _buy({"account": account, "usdc": 10}, alices_key)

    assert response.status_code == 403
    assert response.json()["error"]["param"] == "account"
    assert not DepositReference.objects.exists()


def test_buying_on_a_node_without_a_receiving_wallet_is_unavailable(alice, alices_key, settings):
    settings.PEER_PAY_TO = ""

    response = _buy({"account": "me", "usdc": 10}, alices_key)

    assert response.status_code == 503
    assert "PEER_PAY_TO" in response.json()["error"]["message"]


def test_a_new_purchase_is_pending(alice, alices_key):
    reference = deposit_reference_create(user=alice, micro_usdc=5_000_000)

    body = _get(f"/credits/deposits/{reference.key}/", alices_key).json()

    assert body["status"] == "pending"
    assert (body["micro_usdc"], body["credited_micro_usdc"], body["deposits"]) == (5_000_000, 0, [])
    assert body["signature"] is None and body["ledger_transaction"] is None


def test_an_unpaid_purchase_expires(alice, alices_key):
    reference = deposit_reference_create(user=alice, micro_usdc=1, now=timezone.now() - timedelta(hours=2))

    assert _get(f"/api/credits/deposits/{reference.key}/", alices_key).json()["status"] == "expired"


def test_only_the_buyer_sees_a_purchase(alice, mallory, alices_key):
    reference = deposit_reference_create(user=alice, micro_usdc=1_000_000)
    _, mallorys_key = api_key_issue(user=mallory)

    assert _get(f"/credits/deposits/{reference.key}/", mallorys_key).status_code == 404
    assert _get("/credits/deposits/11111111111111111111111111111111/", alices_key).status_code == 404
    assert Client().get(f"/credits/deposits/{reference.key}/").status_code == 401
