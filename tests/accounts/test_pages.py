"""The account page (credits, ledger, API keys over htmx) and allauth's sign-up."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from apps.accounts.models import ApiKey
from apps.accounts.selectors import api_key_authenticate
from apps.accounts.services import api_key_issue
from apps.credits.services import credits_grant


@pytest.fixture
def alices_browser(alice):
    client = Client()
    client.force_login(alice)
    return client


def test_the_account_page_shows_the_balance_and_the_keys(alice, alices_browser):
    credits_grant(user=alice, credits=10, memo="welcome")
    api_key, _ = api_key_issue(user=alice, name="my-laptop")

    response = alices_browser.get("/account/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "100000" in page.replace(",", "").replace("\u202f", "").replace("\xa0", "")
    assert "my-laptop" in page
    assert api_key.prefix in page
    assert "grant" in page


def test_the_account_page_never_shows_a_whole_key_again(alice, alices_browser):
    _, raw_key = api_key_issue(user=alice)

    page = alices_browser.get("/account/").content.decode()

    assert raw_key not in page


def test_the_account_page_shows_only_the_signed_in_users_keys(alice, mallory, alices_browser):
    mallorys_key, _ = api_key_issue(user=mallory, name="mallorys-key")

    page = alices_browser.get("/account/").content.decode()

    assert "mallorys-key" not in page
    assert mallorys_key.prefix not in page


def test_an_anonymous_visitor_is_sent_to_sign_in(db):
    response = Client().get("/account/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert "next=/account/" in response["Location"]


def test_creating_a_key_returns_the_partial_with_the_new_key_shown_once(alice, alices_browser):
    response = alices_browser.post("/account/keys/", {"name": "htmx-key"}, HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    page = response.content.decode()
    assert "<html" not in page
    api_key = ApiKey.objects.get(user=alice, name="htmx-key")
    shown = page.split('<code id="new-key">', 1)[1].split("</code>", 1)[0]
    assert shown.startswith("pc_")
    assert api_key_authenticate(raw_key=shown) == alice
    assert page.count(shown) == 1
    assert "htmx-key" in page
    # Shown once: the next page load lists it only by prefix.
    assert shown not in alices_browser.get("/account/").content.decode()


def test_creating_a_key_needs_a_post(alices_browser):
    assert alices_browser.get("/account/keys/").status_code == 405


def test_an_anonymous_visitor_cannot_create_a_key(db):
    response = Client().post("/account/keys/", {"name": "x"})

    assert response.status_code == 302
    assert not ApiKey.objects.exists()


def test_revoking_a_key_marks_it_revoked(alice, alices_browser):
    api_key, raw_key = api_key_issue(user=alice, name="old-key")

    response = alices_browser.post(f"/account/keys/{api_key.id}/revoke/")

    assert response.status_code == 200
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert api_key_authenticate(raw_key=raw_key) is None
    page = response.content.decode()
    assert "revoked" in page
    assert f"/account/keys/{api_key.id}/revoke/" not in page


def test_mallory_cannot_revoke_alices_key_from_the_page(alice, mallory):
    api_key, raw_key = api_key_issue(user=alice)
    browser = Client()
    browser.force_login(mallory)

    browser.post(f"/account/keys/{api_key.id}/revoke/")

    api_key.refresh_from_db()
    assert api_key.revoked_at is None
    assert api_key_authenticate(raw_key=raw_key) == alice


def test_the_signup_page_renders(db):
    response = Client().get("/accounts/signup/")

    assert response.status_code == 200
    assert 'name="email"' in response.content.decode()


def test_signing_up_with_an_email_and_a_password_creates_a_user(db):
    client = Client()

    response = client.post("/accounts/signup/", {
        "email": "dave@example.com", "password1": "a long unguessable passphrase 42",
        "password2": "a long unguessable passphrase 42"})

    assert response.status_code == 302, response.content.decode()[:2000]
    user = get_user_model().objects.get(email="dave@example.com")
    assert user.check_password("a long unguessable passphrase 42")
    assert client.get("/account/").status_code == 200


def test_signing_up_with_mismatched_passwords_creates_nobody(db):
    response = Client().post("/accounts/signup/", {
        "email": "dave@example.com", "password1": "a long unguessable passphrase 42",
        "password2": "something else entirely 42"})

    assert response.status_code == 200
    assert not get_user_model().objects.filter(email="dave@example.com").exists()
