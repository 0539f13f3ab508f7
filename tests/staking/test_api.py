"""/api/staking/: balances, history, stake, unstake, claim, stakes, supply, with a Bearer API key."""

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.accounts.services import api_key_issue
from apps.staking.codes import liquid_code, staked_code
from apps.staking.models import UnstakeRequest
from apps.staking.services import bond_lock, peer_grant, peer_stake, unstake_request

from .helpers import PEER, assert_value_is_conserved, balance


class Api:
    def __init__(self, key=None):
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def get(self, path, **params):
        return self.client.get(f"/api/staking/{path}", params, headers=self.headers)

    def post(self, path, body=None, key=None, raw=None):
        headers = {**self.headers, **({"Idempotency-Key": key} if key is not None else {})}
        data = raw if raw is not None else json.dumps(body if body is not None else {})
        return self.client.post(f"/api/staking/{path}", data, content_type="application/json", headers=headers)


@pytest.fixture
def api(alice):
    peer_grant(user=alice, amount=100 * PEER)
    return Api(api_key_issue(user=alice, name="laptop")[1])


def test_the_balance_shows_liquid_staked_unstaking_and_bonds(alice, api, bob, bobs_worker):
    peer_stake(user=alice, amount=30 * PEER)
    unstake_request(user=alice, amount=10 * PEER)
    peer_grant(user=bob, amount=1_000 * PEER)
    bond_lock(worker=bobs_worker, amount=1_000 * PEER)

    assert api.get("balance/").json() == {"liquid": 70 * PEER, "staked": 20 * PEER, "unstaking": 10 * PEER,
                                          "bonds": []}
    bobs = Api(api_key_issue(user=bob)[1]).get("balance/").json()
    assert bobs["bonds"] == [{"worker_id": str(bobs_worker.id), "worker_name": "bob-gpu-1",
                              "locked": 1_000 * PEER, "releasing": 0}]


def test_the_staking_api_without_a_key_is_unauthorized(db):
    assert Api().get("balance/").status_code == 401
    assert Api().post("stake/", {"amount": 1}).status_code == 401


def test_staking_through_the_api_moves_the_peer(alice, api):
    response = api.post("stake/", {"amount": 40 * PEER})

    assert response.status_code == 200
    assert response.json()["amount"] == 40 * PEER
    assert balance(staked_code(alice.pk)) == 40 * PEER
    assert balance(liquid_code(alice.pk)) == 60 * PEER
    assert_value_is_conserved()


def test_an_amount_may_be_a_string_of_digits_for_clients_without_big_integers(alice, api):
    assert api.post("stake/", {"amount": str(40 * PEER)}).status_code == 200
    assert balance(staked_code(alice.pk)) == 40 * PEER


@pytest.mark.parametrize("amount", [0, -5, 1.5, 2.0, "1.5", "1e3", "-3", "abc", "", True, None, [], {},
                                    10**30, str(10**30)])
def test_an_amount_that_is_not_a_positive_integer_within_the_supply_is_a_400(alice, api, amount):
    response = api.post("stake/", {"amount": amount})

    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid"
    assert response.json()["detail"].startswith("amount: ")
    assert balance(staked_code(alice.pk)) == 0
    assert_value_is_conserved()


def test_an_unknown_field_is_a_400_naming_it(alice, api):
    response = api.post("stake/", {"amount": PEER, "ammount": PEER})

    assert response.status_code == 400
    assert response.json()["detail"] == "ammount: Unknown field."
    assert balance(staked_code(alice.pk)) == 0


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", "{}", '"amount"'])
def test_a_body_that_is_not_an_object_with_an_amount_is_a_400(api, raw):
    assert api.post("stake/", raw=raw).status_code == 400


def test_staking_more_than_the_liquid_balance_is_a_409_that_says_so(alice, api):
    response = api.post("stake/", {"amount": 101 * PEER})

    assert response.status_code == 409
    assert response.json()["code"] == "insufficient_funds"
    assert response.json()["detail"] == (f"Not enough $PEER: the liquid balance is {100 * PEER} base units, "
                                         f"this needs {101 * PEER}.")
    assert_value_is_conserved()


def test_the_same_idempotency_key_and_body_answers_the_same_result_once(alice, api):
    first = api.post("stake/", {"amount": 5 * PEER}, key="stake-0001")
    again = api.post("stake/", {"amount": 5 * PEER}, key="stake-0001")

    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert balance(staked_code(alice.pk)) == 5 * PEER
    assert_value_is_conserved()


def test_the_same_idempotency_key_with_another_body_or_endpoint_is_a_409(alice, api):
    api.post("stake/", {"amount": 5 * PEER}, key="k-1")

    other_amount = api.post("stake/", {"amount": 6 * PEER}, key="k-1")
    other_endpoint = api.post("unstake/", {"amount": 5 * PEER}, key="k-1")

    assert other_amount.status_code == other_endpoint.status_code == 409
    assert other_amount.json()["code"] == "idempotency_conflict"
    assert balance(staked_code(alice.pk)) == 5 * PEER
    assert not UnstakeRequest.objects.exists()
    assert_value_is_conserved()


def test_idempotency_keys_belong_to_their_user(alice, bob, api):
    peer_grant(user=bob, amount=10 * PEER)
    bobs = Api(api_key_issue(user=bob)[1])

    assert api.post("stake/", {"amount": 5 * PEER}, key="same").status_code == 200
    assert bobs.post("stake/", {"amount": 7 * PEER}, key="same").status_code == 200
    assert balance(staked_code(bob.pk)) == 7 * PEER


@pytest.mark.parametrize("key", ["", "x" * 101, "has space", "tab\there"])
def test_a_malformed_idempotency_key_is_a_400(api, key):
    assert api.post("stake/", {"amount": PEER}, key=key).status_code == 400


def test_unstaking_creates_a_request_listed_under_stakes(alice, api):
    api.post("stake/", {"amount": 10 * PEER})

    response = api.post("unstake/", {"amount": 4 * PEER}, key="u-1")
    replay = api.post("unstake/", {"amount": 4 * PEER}, key="u-1")

    assert response.status_code == replay.status_code == 201
    assert response.json() == replay.json()
    body = response.json()
    assert (body["source"], body["amount"], body["payable"], body["state"]) == ("stake", 4 * PEER, 4 * PEER,
                                                                                "pending")
    assert [r["id"] for r in api.get("stakes/").json()] == [body["id"]]
    assert_value_is_conserved()


def test_a_claim_during_the_cooldown_is_a_409_with_the_time_it_ends(alice, api):
    api.post("stake/", {"amount": 10 * PEER})
    request_id = api.post("unstake/", {"amount": 10 * PEER}).json()["id"]

    response = api.post(f"unstake/{request_id}/claim/")

    available_at = UnstakeRequest.objects.get(id=request_id).available_at
    assert response.status_code == 409
    assert response.json() == {"detail": f"cooldown until {available_at.isoformat()}", "code": "cooldown"}
    assert_value_is_conserved()


def test_a_claim_after_the_cooldown_pays_and_a_second_claim_is_a_409(alice, api):
    peer_stake(user=alice, amount=10 * PEER)
    request = unstake_request(user=alice, amount=10 * PEER, now=timezone.now() - timedelta(days=8))

    first = api.post(f"unstake/{request.id}/claim/")
    second = api.post(f"unstake/{request.id}/claim/")

    assert first.status_code == 200 and first.json()["state"] == "claimed"
    assert second.status_code == 409 and second.json()["code"] == "already_claimed"
    assert api.get("balance/").json()["liquid"] == 100 * PEER
    assert_value_is_conserved()


def test_a_claim_replayed_with_its_idempotency_key_answers_the_same(alice, api):
    peer_stake(user=alice, amount=10 * PEER)
    request = unstake_request(user=alice, amount=10 * PEER, now=timezone.now() - timedelta(days=8))

    first = api.post(f"unstake/{request.id}/claim/", key="claim-1")
    again = api.post(f"unstake/{request.id}/claim/", key="claim-1")

    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert balance(liquid_code(alice.pk)) == 100 * PEER


def test_nobody_claims_another_users_request_through_the_api(alice, mallory):
    peer_grant(user=alice, amount=10 * PEER)
    peer_stake(user=alice, amount=10 * PEER)
    request = unstake_request(user=alice, amount=10 * PEER, now=timezone.now() - timedelta(days=8))
    mallorys = Api(api_key_issue(user=mallory)[1])

    assert mallorys.post(f"unstake/{request.id}/claim/").status_code == 404
    assert mallorys.post("unstake/999999/claim/").status_code == 404
    assert mallorys.post(f"unstake/{request.id}/claim/", {"amount": 1}).status_code == 400
    assert balance(liquid_code(mallory.pk)) == 0


def test_the_history_lists_the_callers_peer_entries_newest_first(alice, bob, api):
    peer_grant(user=bob, amount=3 * PEER)
    api.post("stake/", {"amount": 10 * PEER})

    entries = api.get("history/").json()

    assert [(e["kind"], e["account_kind"], e["amount"]) for e in entries] == [
        ("peer_stake", "staked", 10 * PEER), ("peer_stake", "user", -10 * PEER), ("peer_grant", "user", 100 * PEER)]
    assert [e["id"] for e in api.get("history/", limit=1, before=entries[0]["id"]).json()] == [entries[1]["id"]]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 201}, {"limit": "x"}, {"before": -1}])
def test_a_bad_history_page_is_a_400(api, params):
    assert api.get("history/", **params).status_code == 400


def test_the_supply_is_public(alice):
    peer_grant(user=alice, amount=10 * PEER)
    peer_stake(user=alice, amount=4 * PEER)

    response = Api().get("supply/")

    assert response.status_code == 200
    assert response.json() == {"minted": 1_000_000 * PEER, "burned": 0, "circulating": 1_000_000 * PEER,
                               "staked": 4 * PEER, "unstaking": 0, "bonded": 0, "treasury": 999_990 * PEER}


def test_the_openapi_schema_documents_the_staking_endpoints(db):
    schema = Client().get("/api/schema/", headers={"Accept": "application/json"}).json()

    for path in ("balance/", "history/", "stake/", "unstake/", "unstake/{request_id}/claim/", "stakes/", "supply/"):
        assert f"/api/staking/{path}" in schema["paths"], path
    stake = schema["paths"]["/api/staking/stake/"]["post"]
    assert {p["name"] for p in stake["parameters"]} == {"Idempotency-Key"}
    assert {"200", "400", "409"} <= set(stake["responses"])
