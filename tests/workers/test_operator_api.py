"""/api/workers/ with a Bearer API key: register (token once), read, change, revoke, rotate, jobs;
only the operator sees or changes a worker; bad input is a 400 that says what is wrong."""

import json
import uuid

import pytest
from django.test import Client
from django.utils import timezone
from solders.keypair import Keypair

from apps.accounts.services import api_key_issue
from apps.marketplace.models import Job
from apps.workers.models import CatalogueModel, Worker
from apps.workers.services import worker_token_hash

NODE = "https://node.example.org"


@pytest.fixture(autouse=True)
def _site(settings):
    settings.SITE_URL = NODE


@pytest.fixture
def catalogue(db):
    CatalogueModel.objects.create(name="peer-mixtral", served_model="gemma-3-270m-q4_k_m", digests=["sha256:" + "ab" * 32])
    CatalogueModel.objects.create(name="peer-retired", served_model="old", digests=[], active=False)


class Api:
    def __init__(self, user=None):
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {api_key_issue(user=user)[1]}"} if user else {}

    def get(self, path, **params):
        return self.client.get(f"/api/workers/{path}", params, headers=self.headers)

    def post(self, path, body=None):
        return self.client.post(f"/api/workers/{path}", json.dumps(body or {}), content_type="application/json",
                                headers=self.headers)

    def patch(self, path, body):
        return self.client.patch(f"/api/workers/{path}", json.dumps(body), content_type="application/json",
                                 headers=self.headers)


@pytest.fixture
def bobs_api(bob):
    return Api(bob)


@pytest.fixture
def mallorys_api(mallory):
    return Api(mallory)


GOOD = {"name": "rig-1", "tiers": ["open", "verified"], "hardware_description": "2x A100",
        "offers": {"peer-mixtral": {"price_per_token": 150}}}


@pytest.fixture
def bobs_worker(bobs_api, catalogue):
    return Worker.objects.get(id=bobs_api.post("", GOOD).json()["worker"]["id"])


def test_registering_answers_201_with_the_token_once_and_the_command(bob, bobs_api, catalogue):
    response = bobs_api.post("", GOOD)

    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    body = response.json()
    token, worker = body["token"], Worker.objects.get(operator=bob)
    assert token.startswith("pcw_") and worker.token_hash == worker_token_hash(token)
    assert body["server"] == NODE
    assert body["command"] == f"python -m worker --server {NODE} --token {token}"
    assert body["worker"]["id"] == str(worker.id) and body["worker"]["status"] == "offline"
    assert body["worker"]["offers"] == {"peer-mixtral": {"price_per_token": 150}}
    assert response["Location"].endswith(f"/api/workers/{worker.id}/")
    assert token not in bobs_api.get(f"{worker.id}/").content.decode()
    assert token not in bobs_api.get("").content.decode()
    assert all(token not in str(value) for value in Worker.objects.filter(id=worker.id).values().get().values())


def test_the_api_without_a_key_is_unauthorized(db):
    assert Api().get("").status_code == 401
    assert Api().post("", GOOD).status_code == 401


def test_the_list_holds_only_the_callers_workers(bobs_api, mallorys_api, bobs_worker):
    mallorys_api.post("", {**GOOD, "name": "mallorys-rig"})

    assert [w["name"] for w in bobs_api.get("").json()] == ["rig-1"]
    assert [w["name"] for w in mallorys_api.get("").json()] == ["mallorys-rig"]


def test_the_detail_holds_earnings_bond_and_reputation(bobs_api, bobs_worker, settings):
    body = bobs_api.get(f"{bobs_worker.id}/").json()

    assert body["name"] == "rig-1" and body["tiers"] == ["open", "verified"]
    assert (body["earnings_micro_usdc"], body["bond"], body["bond_required"]) == (0, 0, settings.PEER_VERIFIED_BOND)
    assert body["reputation"] is None and body["payouts"] == []


def test_patch_changes_name_payout_address_and_offers(bobs_api, bobs_worker):
    address = str(Keypair().pubkey())

    response = bobs_api.patch(f"{bobs_worker.id}/", {"name": "rig-one", "payout_address": address,
                                                     "offers": {"peer-mixtral": {"price_per_token": 0}}})

    assert response.status_code == 200, response.json()
    worker = Worker.objects.get(id=bobs_worker.id)
    assert (worker.name, worker.payout_address, worker.offers) == (
        "rig-one", address, {"peer-mixtral": {"price_per_token": 0}})
    assert response.json()["payout_address"] == address
    assert bobs_api.patch(f"{bobs_worker.id}/", {"payout_address": ""}).json()["payout_address"] == ""


def test_mallory_gets_404_for_everything_about_bobs_worker(mallorys_api, bobs_worker):
    worker_id = bobs_worker.id

    assert mallorys_api.get(f"{worker_id}/").status_code == 404
    assert mallorys_api.get(f"{worker_id}/jobs/").status_code == 404
    assert mallorys_api.patch(f"{worker_id}/", {"payout_address": str(Keypair().pubkey())}).status_code == 404
    assert mallorys_api.post(f"{worker_id}/revoke/").status_code == 404
    assert mallorys_api.post(f"{worker_id}/rotate-token/").status_code == 404
    assert mallorys_api.get(f"{worker_id}/").json() == {"detail": "No worker of yours with this id.", "code": "not_found"}
    after = Worker.objects.get(id=worker_id)
    assert (after.payout_address, after.token_hash, after.revoked_at) == ("", bobs_worker.token_hash, None)


def test_an_unknown_worker_id_is_404(bobs_api, db):
    assert bobs_api.get(f"{uuid.uuid4()}/").status_code == 404


def test_a_confidential_worker_is_told_to_start_its_agent_with_an_enclave(bob, bobs_api, catalogue):
    response = bobs_api.post("", {**GOOD, "tiers": ["confidential"]})

    assert response.status_code == 201
    body = response.json()
    assert body["command"] == f"python -m worker --server {NODE} --token {body['token']} --enclave simulated"
    assert Worker.objects.get(operator=bob).tiers == ["confidential"]


@pytest.mark.parametrize("body, field, message", [
    ({**GOOD, "tiers": ["gold"]}, "tiers", "Unknown tier 'gold'"),
    ({**GOOD, "tiers": []}, "tiers", "at least one tier"),
    ({**GOOD, "tiers": "open"}, "tiers", "Expected a list"),
    ({**GOOD, "name": ""}, "name", "A name is required"),
    ({**GOOD, "name": "x" * 101}, "name", "At most 100"),
    ({**GOOD, "offers": {"peer-mixtral": {"price_per_token": -1}}}, "offers", "must not be negative"),
    ({**GOOD, "offers": {"peer-mixtral": {"price_per_token": 1.5}}}, "offers", "whole number"),
    ({**GOOD, "offers": {"peer-mixtral": {"price_per_token": 100.0}}}, "offers", "whole number"),
    ({**GOOD, "offers": {"peer-mixtral": {"price_per_token": "100"}}}, "offers", "whole number"),
    ({**GOOD, "offers": {"peer-mixtral": {"price_per_token": True}}}, "offers", "whole number"),
    ({**GOOD, "offers": {"peer-mixtral": {"price_per_token": 10**12}}}, "offers", "at most 10000"),
    ({**GOOD, "offers": {"peer-mixtral": 100}}, "offers", "exactly a price_per_token"),
    ({**GOOD, "offers": {"peer-mixtral": {"price_per_token": 1, "currency": "EUR"}}}, "offers", "exactly a price_per_token"),
    ({**GOOD, "offers": {"peer-gpt5": {"price_per_token": 100}}}, "offers", "Unknown model 'peer-gpt5'"),
    ({**GOOD, "offers": {"peer-retired": {"price_per_token": 100}}}, "offers", "Unknown model 'peer-retired'"),
    ({**GOOD, "offers": [1, 2]}, "offers", "Expected a dictionary"),
    ({**GOOD, "payout_address": "x"}, "payout_address", "Unknown field"),
])
def test_bad_registrations_are_400_with_the_reason_and_register_nothing(bob, bobs_api, catalogue, body, field, message):
    response = bobs_api.post("", body)

    assert response.status_code == 400
    error = response.json()
    assert error["code"] == "invalid" and field in error["errors"]
    assert message in " ".join(error["errors"][field]) and message in error["detail"]
    assert not Worker.objects.filter(operator=bob).exists()


def test_every_bad_field_is_reported_at_once(bobs_api, catalogue):
    errors = bobs_api.post("", {"name": " ", "tiers": ["gold"], "offers": {"x": {"price_per_token": 1}}}).json()["errors"]

    assert set(errors) == {"name", "tiers", "offers"}


@pytest.mark.parametrize("body, field, message", [
    ({"payout_address": "not-base58-0OIl"}, "payout_address", "Not a Solana address"),
    ({"payout_address": "4Nd1mBQtrMJVYVfKf2PJy9NZUZdTAsp7D4xWLs4gDB4"}, "payout_address", "Not a Solana address"),
    ({"payout_address": "11111111111111111111111111111111"}, "payout_address", "Not a usable Solana wallet"),
    ({"offers": {"peer-mixtral": {"price_per_token": -5}}}, "offers", "must not be negative"),
    ({"name": "  "}, "name", "A name is required"),
    ({"tiers": ["open"]}, "tiers", "Unknown field"),
    ({"token_hash": "0" * 64}, "token_hash", "Unknown field"),
])
def test_bad_changes_are_400_with_the_reason_and_change_nothing(bobs_api, bobs_worker, body, field, message):
    response = bobs_api.patch(f"{bobs_worker.id}/", body)

    assert response.status_code == 400
    assert message in " ".join(response.json()["errors"][field])
    after = Worker.objects.get(id=bobs_worker.id)
    assert (after.name, after.payout_address, after.offers, after.token_hash) == (
        "rig-1", "", bobs_worker.offers, bobs_worker.token_hash)


def test_revoking_marks_the_worker_revoked(bobs_api, bobs_worker):
    response = bobs_api.post(f"{bobs_worker.id}/revoke/")

    assert response.status_code == 200 and response.json()["status"] == "revoked"
    assert Worker.objects.get(id=bobs_worker.id).revoked_at is not None


def test_rotating_returns_a_new_token_once_and_reinstates_a_revoked_worker(bobs_api, bobs_worker):
    bobs_api.post(f"{bobs_worker.id}/revoke/")

    response = bobs_api.post(f"{bobs_worker.id}/rotate-token/")

    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    body = response.json()
    after = Worker.objects.get(id=bobs_worker.id)
    assert after.token_hash == worker_token_hash(body["token"]) != bobs_worker.token_hash
    assert after.revoked_at is None and body["worker"]["status"] == "offline"
    assert body["command"].endswith(f"--token {body['token']}")


def test_the_jobs_of_a_worker_are_listed_newest_first(alice, bobs_api, bobs_worker):
    for tokens in (5, 7):
        Job.objects.create(user=alice, public_model="peer-mixtral", served_model="gemma-3-270m-q4_k_m", tier="open",
                           params={}, seed=1, prompt_sha256="0" * 64, prompt_tokens=tokens, worker=bobs_worker,
                           hold_amount=0, deadline_at=timezone.now())

    jobs = bobs_api.get(f"{bobs_worker.id}/jobs/").json()

    assert [job["prompt_tokens"] for job in jobs] == [7, 5]
    assert set(jobs[0]) >= {"id", "status", "prompt_tokens", "completion_tokens", "charged_amount", "created_at"}
    assert [j["prompt_tokens"] for j in bobs_api.get(f"{bobs_worker.id}/jobs/", limit=1).json()] == [7]
    assert bobs_api.get(f"{bobs_worker.id}/jobs/", limit=0).status_code == 400


def test_the_workers_endpoints_are_in_the_openapi_schema(bobs_api, db):
    schema = bobs_api.client.get("/api/schema/", {"format": "json"}, headers=bobs_api.headers).json()

    assert {"/api/workers/", "/api/workers/{worker_id}/", "/api/workers/{worker_id}/revoke/",
            "/api/workers/{worker_id}/rotate-token/", "/api/workers/{worker_id}/jobs/"} <= set(schema["paths"])
