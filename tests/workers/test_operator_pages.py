"""The operator pages (/operator/): registering a worker, the one-time token and command, the
worker's page (jobs, earnings, bond, reputation), prices, payout address, rotate and revoke."""

import hashlib
import re

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone
from solders.keypair import Keypair

from apps.credits.services import credits_grant, credits_hold_in_atomic, credits_settle_in_atomic
from apps.marketplace.models import Job
from apps.workers.models import CatalogueModel, Worker, WorkerPayout
from apps.workers.services import worker_register, worker_token_hash
from tests.conftest import bond

NODE = "https://node.example.org"


@pytest.fixture(autouse=True)
def _site(settings):
    settings.SITE_URL = NODE + "/"


@pytest.fixture
def catalogue(db):
    return [CatalogueModel.objects.create(name="peer-mixtral", served_model="gemma-3-270m-q4_k_m",
                                          digests=["sha256:" + "ab" * 32]),
            CatalogueModel.objects.create(name="peer-llama", served_model="gemma-3-270m-q4_k_m",
                                          digests=["sha256:" + "ab" * 32])]


def _browser(user):
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def bobs_browser(bob):
    return _browser(bob)


@pytest.fixture
def bobs_worker(bob):
    return worker_register(operator=bob, name="bob-gpu", tiers=["open", "verified"])[0]


def _register(browser, catalogue, **overrides):
    mixtral = catalogue[0]
    form = {"name": "rig-1", "tiers": ["open", "verified"], "hardware_description": "RTX 4090, 24 GB",
            f"price_{mixtral.id}": "120", **overrides}
    return browser.post("/operator/workers/new/", form)


def _shown_token(page: str) -> str:
    return re.search(r'id="worker-token">(pcw_[A-Za-z0-9_-]+)<', page).group(1)


def test_an_anonymous_visitor_is_sent_to_sign_in(db):
    for path in ("/operator/", "/operator/workers/new/", "/operator/workers/status/"):
        response = Client().get(path)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_register_form_offers_every_tier_and_says_what_confidential_needs(bobs_browser, catalogue):
    page = bobs_browser.get("/operator/workers/new/").content.decode()

    assert 'value="open"' in page and 'value="verified"' in page and 'value="confidential"' in page
    assert not re.search(r'value="confidential" disabled', page)
    assert "enclave" in page
    assert "peer-mixtral" in page and "peer-llama" in page


def test_registering_through_the_page_shows_the_token_once_and_stores_only_its_hash(bob, bobs_browser, catalogue):
    response = _register(bobs_browser, catalogue)

    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    page = response.content.decode()
    token = _shown_token(page)
    worker = Worker.objects.get(operator=bob)
    assert worker.token_hash == hashlib.sha256(token.encode()).hexdigest() == worker_token_hash(token)
    assert all(token not in str(value) for value in Worker.objects.filter(id=worker.id).values().get().values())
    assert (worker.name, worker.tiers, worker.hardware_description) == ("rig-1", ["open", "verified"], "RTX 4090, 24 GB")
    assert worker.offers == {"peer-mixtral": {"price_per_token": 120}}
    assert token not in bobs_browser.get(f"/operator/workers/{worker.id}/").content.decode()
    assert token not in bobs_browser.get("/operator/").content.decode()


def test_the_command_shown_holds_the_token_and_the_node_url(bobs_browser, catalogue):
    page = _register(bobs_browser, catalogue).content.decode()

    token = _shown_token(page)
    command = re.search(r'id="agent-command">([^<]+)<', page).group(1)
    assert command == f"python -m worker --server {NODE} --token {token}"
    assert "Copy command" in page


def test_a_worker_with_no_prices_is_registered_with_no_offers(bob, bobs_browser, catalogue):
    response = _register(bobs_browser, catalogue, **{f"price_{catalogue[0].id}": ""})

    assert response.status_code == 200
    assert Worker.objects.get(operator=bob).offers == {}


@pytest.mark.parametrize("overrides, message", [
    ({"tiers": ["gold"]}, "gold"),
    ({"tiers": []}, "This field is required"),
    ({"name": "  "}, "required"),
    ({"price": "-5"}, "must not be negative"),
    ({"price": "1.5"}, "whole number"),
    ({"price": "10001"}, "at most 10000"),
])
def test_bad_input_on_the_register_form_is_explained_and_registers_nothing(bob, bobs_browser, catalogue,
                                                                          overrides, message):
    if "price" in overrides:
        overrides = {f"price_{catalogue[0].id}": overrides["price"]}

    response = _register(bobs_browser, catalogue, **overrides)

    assert response.status_code == 200
    page = response.content.decode()
    assert message in page and 'id="worker-token"' not in page
    assert not Worker.objects.filter(operator=bob).exists()


def test_the_list_shows_only_the_operators_own_workers(bob, mallory, bobs_browser, bobs_worker):
    worker_register(operator=mallory, name="mallorys-rig", tiers=["open"])

    page = bobs_browser.get("/operator/").content.decode()

    assert "bob-gpu" in page and "mallorys-rig" not in page
    assert 'hx-get="/operator/workers/status/"' in page and 'hx-trigger="every 5s"' in page


def test_the_status_partial_shows_a_connected_worker_online_with_its_agent_and_models(bobs_browser, bobs_worker):
    Worker.objects.filter(id=bobs_worker.id).update(
        status=Worker.Status.BUSY, channel_name="specific.x!y", agent_version="0.4.1", last_seen_at=timezone.now(),
        models_served=[{"id": "gemma-3-270m-q4_k_m", "digest": "sha256:" + "ab" * 32, "backend": "builtin"}])

    page = bobs_browser.get("/operator/workers/status/").content.decode()

    assert "online · busy" in page and "0.4.1" in page and "gemma-3-270m-q4_k_m" in page
    assert "never" not in page


def _settled_job(user, worker, *, charge=50_000):
    credits_grant(user=user, credits=100)
    job = Job.objects.create(
        user=user, public_model="peer-mixtral", served_model="gemma-3-270m-q4_k_m", tier="open", params={},
        seed=1, prompt_sha256="0" * 64, prompt_tokens=12, completion_tokens=30, worker=worker,
        hold_amount=100_000, charged_amount=charge, status=Job.Status.COMPLETED, hold_state=Job.HoldState.CAPTURED,
        deadline_at=timezone.now())
    with transaction.atomic():
        credits_hold_in_atomic(user=user, amount=100_000, reference=job.reference)
        credits_settle_in_atomic(user=user, held_amount=100_000, charge=charge, worker=worker, reference=job.reference)
    return job


def test_the_workers_page_shows_its_jobs_earnings_payouts_bond_and_reputation(alice, bobs_browser, bobs_worker):
    _settled_job(alice, bobs_worker, charge=50_000)
    WorkerPayout.objects.create(worker=bobs_worker, address="4Nd1mBQtrMJVYVfKf2PJy9NZUZdTAsp7D4xWLs4gDB4T",
                                amount=7, state=WorkerPayout.State.SENT, signature="5sig" * 10)

    page = bobs_browser.get(f"/operator/workers/{bobs_worker.id}/").content.decode()

    assert "completed" in page and "12 + 30" in page and ">50000<" in page
    assert "35,000 µUSDC" in page  # 70% of the 50,000 charged
    assert "sent" in page and "5sig" * 10 in page
    assert "0 PEER" in page and "1,000 PEER" in page
    assert "until it is bonded it gets only open-tier jobs" in page
    assert "not measured yet" in page


def test_a_bonded_worker_is_shown_as_bonded_for_the_verified_tier(bobs_browser, bobs_worker):
    bond(bobs_worker)

    page = bobs_browser.get(f"/operator/workers/{bobs_worker.id}/").content.decode()

    assert "1,000 PEER <small>(1,000,000,000,000 base units)" in page
    assert "gets only open-tier jobs" not in page


def test_a_measured_reputation_is_shown(bobs_browser, bobs_worker):
    Worker.objects.filter(id=bobs_worker.id).update(reputation=0.87, reputation_updated_at=timezone.now())

    page = bobs_browser.get(f"/operator/workers/{bobs_worker.id}/").content.decode()

    assert "0.87" in page and "not measured yet" not in page


def test_mallory_cannot_see_or_change_bobs_worker(mallory, bobs_worker):
    browser, address = _browser(mallory), str(Keypair().pubkey())
    base = f"/operator/workers/{bobs_worker.id}"

    assert browser.get(f"{base}/").status_code == 404
    assert browser.get(f"{base}/status/").status_code == 404
    assert browser.post(f"{base}/payout-address/", {"payout_address": address}).status_code == 404
    assert browser.post(f"{base}/offers/", {}).status_code == 404
    assert browser.post(f"{base}/rotate-token/").status_code == 404
    assert browser.post(f"{base}/revoke/").status_code == 404
    after = Worker.objects.get(id=bobs_worker.id)
    assert (after.payout_address, after.token_hash, after.revoked_at) == ("", bobs_worker.token_hash, None)


def test_a_valid_payout_address_is_saved(bobs_browser, bobs_worker):
    address = str(Keypair().pubkey())

    response = bobs_browser.post(f"/operator/workers/{bobs_worker.id}/payout-address/", {"payout_address": address},
                                 HTTP_HX_REQUEST="true")

    assert response.status_code == 200 and "Saved" in response.content.decode()
    assert Worker.objects.get(id=bobs_worker.id).payout_address == address


@pytest.mark.parametrize("address", ["not-an-address", "0OIl" * 11, "4Nd1mBQtrMJVYVfKf2PJy9NZUZdTAsp7D4xWLs4gDB4",
                                     "11111111111111111111111111111111"])
def test_an_invalid_payout_address_is_refused_with_a_reason(bobs_browser, bobs_worker, address):
    response = bobs_browser.post(f"/operator/workers/{bobs_worker.id}/payout-address/", {"payout_address": address})

    page = response.content.decode()
    assert response.status_code == 200 and "Saved" not in page
    assert "Solana" in page and 'role="alert"' in page
    assert Worker.objects.get(id=bobs_worker.id).payout_address == ""


def test_prices_are_changed_from_the_workers_page(bobs_browser, bobs_worker, catalogue):
    mixtral, llama = catalogue

    response = bobs_browser.post(f"/operator/workers/{bobs_worker.id}/offers/",
                                 {f"price_{mixtral.id}": "90", f"price_{llama.id}": "0"})

    assert "Prices saved" in response.content.decode()
    assert Worker.objects.get(id=bobs_worker.id).offers == {"peer-mixtral": {"price_per_token": 90},
                                                            "peer-llama": {"price_per_token": 0}}


def test_rotating_from_the_page_shows_a_new_token_once_and_the_old_one_stops_working(bobs_browser, bobs_worker):
    response = bobs_browser.post(f"/operator/workers/{bobs_worker.id}/rotate-token/", HTTP_HX_REQUEST="true")

    page = response.content.decode()
    token = _shown_token(page)
    assert response["Cache-Control"] == "no-store"
    assert f"--server {NODE} --token {token}" in page
    after = Worker.objects.get(id=bobs_worker.id)
    assert after.token_hash == worker_token_hash(token) != bobs_worker.token_hash


def test_revoking_from_the_page_marks_the_worker_revoked(bobs_browser, bobs_worker):
    response = bobs_browser.post(f"/operator/workers/{bobs_worker.id}/revoke/", HTTP_HX_REQUEST="true")

    assert response.status_code == 200 and "revoked" in response.content.decode()
    assert Worker.objects.get(id=bobs_worker.id).revoked_at is not None
    assert 'data-state="revoked"' in bobs_browser.get("/operator/workers/status/").content.decode()
